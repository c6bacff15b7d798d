"""Lennard-Jones clusters in 3-D, held together by a harmonic centre-of-mass term.

E(x) = 2 eps sum_{i<j} [(r_m / d_ij)^12 - 2 (r_m / d_ij)^6] + k sum_i |x_i - mean x|^2,

with eps = r_m = 1 and k = ``harmonic`` = 0.5 by default. The factor 2 on the pair sum
is the convention of the community LJ-13 / LJ-55 reference data (Klein, Krämer, Noé
2023, as used by iDEM); see ``systems/lj13/PROVENANCE.md``. Energies are reduced
(kT = 1), lengths in reduced units (nm on the OpenMM side).

Example
-------
>>> import physsample as ps
>>> lj13 = ps.systems.get("lj13")
>>> x = lj13.default_positions()[None]
>>> lj13.energy(x).shape
torch.Size([1])
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
    fcc_cluster,
    pair_indices,
    pair_vectors,
    relax_with_openmm,
)
from physsample.systems.openmm_io import positions_to_openmm
from physsample.systems.units import REDUCED_TEMPERATURE

__all__ = ["LennardJones"]


class LennardJones(ParticleSystem):
    """A cluster of ``n_particles`` Lennard-Jones particles in 3-D.

    Parameters
    ----------
    n_particles
        Number of particles (13 for LJ-13, 55 for LJ-55).
    epsilon
        Well depth of one pair term *before* the factor 2, in kT; the pair minimum at
        d = r_m is -2 epsilon.
    r_m
        Distance of the pair minimum (reduced length unit, nm in OpenMM).
    harmonic
        Spring constant k of k sum_i |x_i - mean x|^2, in kT per length unit squared.

    Attributes
    ----------
    temperature : float
        :data:`~physsample.systems.units.REDUCED_TEMPERATURE` (K), at which
        kT = 1 kJ/mol in the OpenMM counterpart.
    """

    def __init__(
        self,
        n_particles: int,
        epsilon: float = 1.0,
        r_m: float = 1.0,
        harmonic: float = 0.5,
    ) -> None:
        super().__init__(n_particles, spatial_dim=3)
        self.epsilon, self.r_m, self.harmonic = float(epsilon), float(r_m), float(harmonic)
        self.name = f"lj{self.n_particles}"
        self.temperature = REDUCED_TEMPERATURE
        self.register_buffer("pairs", pair_indices(self.n_particles), persistent=False)

    def pair_energy(self, d2: torch.Tensor) -> torch.Tensor:
        """Pair term 2 eps [(r_m/d)^12 - 2 (r_m/d)^6] in kT, from squared distances ``d2``."""
        s6 = (self.r_m**2 / d2) ** 3
        return 2.0 * self.epsilon * (s6 * s6 - 2.0 * s6)

    def harmonic_energy(self, x: torch.Tensor) -> torch.Tensor:
        """k sum_i |x_i - mean x|^2 in kT, shape (batch,), for flat positions (batch, dim)."""
        return self.harmonic * self.remove_com(x).square().sum(dim=-1)

    def _energy(self, x: torch.Tensor) -> torch.Tensor:
        v = pair_vectors(x, self.n_particles, self.spatial_dim, self.pairs)
        pair = self.pair_energy(v.square().sum(dim=-1)).sum(dim=-1)
        return pair + self.harmonic_energy(x)

    def to_openmm(
        self, x: torch.Tensor | None = None
    ) -> tuple[openmm.System, openmm.unit.Quantity]:
        """Return ``(openmm.System, positions)`` in reduced units.

        One ``CustomBondForce`` with a bond for every pair (on the Reference platform
        about 20x faster for LJ-13 than a ``CustomNonbondedForce`` without cutoff, and
        the same energy). The centre-of-mass
        term is written as a pair term too, using
        sum_i |x_i - mean x|^2 = (1/N) sum_{i<j} |x_i - x_j|^2 (equal masses).
        Positions are in nm; the potential energy in kJ/mol equals :meth:`energy`
        (kT = 1 kJ/mol at :attr:`temperature`). Masses are 1 amu.

        Parameters
        ----------
        x
            One configuration, shape (dim,) or (1, dim); :meth:`default_positions` if None.
        """
        x = self.default_positions() if x is None else x
        config = as_configuration(x, self.n_particles, self.spatial_dim)
        return self._openmm_system(), positions_to_openmm(config, self.n_particles, 3)

    def _openmm_system(self) -> openmm.System:
        system = openmm.System()
        force = openmm.CustomBondForce("2*eps*(s6^2 - 2*s6) + kc*r^2; s6 = (rm/r)^6")
        force.addGlobalParameter("eps", self.epsilon)
        force.addGlobalParameter("rm", self.r_m)
        force.addGlobalParameter("kc", self.harmonic / self.n_particles)
        for _ in range(self.n_particles):
            system.addParticle(1.0)
        for i in range(self.n_particles):
            for j in range(i + 1, self.n_particles):
                force.addBond(i, j, [])
        system.addForce(force)
        return system

    def default_positions(self) -> torch.Tensor:
        """A local energy minimum near a compact cluster, shape (dim,), float64, CoM-free.

        Found deterministically with OpenMM's L-BFGS minimiser from the
        ``n_particles`` fcc sites nearest a lattice site (nearest-neighbour distance
        r_m), slightly and deterministically perturbed to leave symmetric saddle points.
        For LJ-13 this is the icosahedron.
        """
        params = (self.n_particles, self.epsilon, self.r_m, self.harmonic)
        return torch.from_numpy(_relaxed_positions(*params).copy()).to(self.device)


@functools.lru_cache(maxsize=16)
def _relaxed_positions(n_particles: int, epsilon: float, r_m: float, harmonic: float) -> np.ndarray:
    system = LennardJones(n_particles, epsilon, r_m, harmonic)
    k = np.arange(n_particles, dtype=np.float64)[:, None]
    kick = 0.03 * r_m * np.sin(k * np.array([1.3, 2.1, 3.7]) + np.array([1.0, 2.0, 3.0]))
    omm_system, positions = system.to_openmm((fcc_cluster(n_particles, r_m) + kick).reshape(-1))
    relaxed = relax_with_openmm(omm_system, positions)
    return (relaxed - relaxed.mean(axis=0)).reshape(-1)
