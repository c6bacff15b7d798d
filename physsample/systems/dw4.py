"""DW-4: four particles in 2-D bound by a double-well pair potential.

E(x) = sum_{i<j} v(d_ij),  v(d) = a (d - d0)^4 + b (d - d0)^2 + c (d - d0),

with a = 0.9, b = -4, c = 0, d0 = 4 (Köhler, Klein, Noé 2020; the convention of the
community reference data, see ``systems/dw4/PROVENANCE.md``). Energies are reduced
(kT = 1) and lengths are in reduced units (nm on the OpenMM side).

Example
-------
>>> import physsample as ps
>>> dw4 = ps.systems.get("dw4")
>>> x = dw4.default_positions()[None]
>>> round(float(dw4.energy(x)), 3)
-25.792
"""

from __future__ import annotations

import functools

import numpy as np
import openmm
import openmm.unit
import torch

from physsample.systems.base import ParticleSystem
from physsample.systems.geometry import (
    as_configuration,
    pair_distances,
    pair_indices,
    relax_with_openmm,
)
from physsample.systems.openmm_io import positions_to_openmm
from physsample.systems.units import REDUCED_TEMPERATURE

__all__ = ["DoubleWell4"]


class DoubleWell4(ParticleSystem):
    """DW-4: four particles in 2-D, E = sum_{i<j} a u^4 + b u^2 + c u with u = d_ij - d0.

    Parameters
    ----------
    a, b, c
        Quartic, quadratic and linear coefficients of the pair potential, in kT.
    d0
        Offset of the pair distance (reduced length unit, nm in OpenMM).

    Attributes
    ----------
    temperature : float
        :data:`~physsample.systems.units.REDUCED_TEMPERATURE` (K), at which
        kT = 1 kJ/mol in the OpenMM counterpart.
    """

    name = "dw4"

    def __init__(
        self,
        a: float = 0.9,
        b: float = -4.0,
        c: float = 0.0,
        d0: float = 4.0,
    ) -> None:
        super().__init__(n_particles=4, spatial_dim=2)
        self.a, self.b, self.c, self.d0 = float(a), float(b), float(c), float(d0)
        self.temperature = REDUCED_TEMPERATURE
        self.register_buffer("pairs", pair_indices(self.n_particles), persistent=False)

    def pair_energy(self, d: torch.Tensor) -> torch.Tensor:
        """Pair potential v(d) in kT, elementwise on distances ``d`` (any shape)."""
        u = d - self.d0
        return self.a * u**4 + self.b * u**2 + self.c * u

    def _energy(self, x: torch.Tensor) -> torch.Tensor:
        d = pair_distances(x, self.n_particles, self.spatial_dim, self.pairs)
        return self.pair_energy(d).sum(dim=-1)

    def to_openmm(
        self, x: torch.Tensor | None = None
    ) -> tuple[openmm.System, openmm.unit.Quantity]:
        """Return ``(openmm.System, positions)`` in reduced units.

        One ``CustomCompoundBondForce`` term per pair, with the distance taken in the
        x-y plane only. Positions are in nm with z = 0; the potential energy in kJ/mol
        equals :meth:`energy` (kT = 1 kJ/mol at :attr:`temperature`). Masses are 1 amu.
        The z coordinates carry no force: under Langevin dynamics they diffuse freely
        and should be dropped (they never change the energy).

        Parameters
        ----------
        x
            One configuration, shape (dim,) or (1, dim); :meth:`default_positions` if None.
        """
        x = self.default_positions() if x is None else x
        config = as_configuration(x, self.n_particles, self.spatial_dim)
        return self._openmm_system(), positions_to_openmm(config, self.n_particles, 2)

    def _openmm_system(self) -> openmm.System:
        system = openmm.System()
        for _ in range(self.n_particles):
            system.addParticle(1.0)
        force = openmm.CustomCompoundBondForce(
            2, "a*u^4 + b*u^2 + c*u; u = sqrt((x2 - x1)^2 + (y2 - y1)^2) - d0"
        )
        for key in ("a", "b", "c", "d0"):
            force.addGlobalParameter(key, getattr(self, key))
        for i, j in self.pairs.cpu().T.tolist():
            force.addBond([i, j], [])
        system.addForce(force)
        return system

    def default_positions(self) -> torch.Tensor:
        """A local energy minimum, shape (dim,), float64, CoM-free.

        Found deterministically with OpenMM's L-BFGS minimiser from a kite: a bent
        three-particle chain and a fourth particle opposite its middle. With the default
        parameters this is the global minimum, E = -25.792 (pair distances 2.70 twice,
        5.28, 5.42 and 5.53 twice).
        """
        params = (self.a, self.b, self.c, self.d0)
        return torch.from_numpy(_relaxed_positions(*params).copy()).to(self.device)


@functools.lru_cache(maxsize=16)
def _relaxed_positions(a: float, b: float, c: float, d0: float) -> np.ndarray:
    system = DoubleWell4(a, b, c, d0)
    start = (d0 / 4.0) * np.array([[-2.6, -0.6], [2.6, -0.6], [0.0, 0.0], [0.0, 5.4]])
    omm_system, positions = system.to_openmm(start.reshape(-1))
    relaxed = relax_with_openmm(omm_system, positions)[:, :2]
    return (relaxed - relaxed.mean(axis=0)).reshape(-1)
