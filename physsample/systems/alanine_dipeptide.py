"""Alanine dipeptide (ACE-ALA-NME) in vacuum, the smallest molecule with a Ramachandran plot.

The force field, topology and starting structure are those of
``openmmtools.testsystems.AlanineDipeptideVacuum(constraints=None)``: AMBER ff96, no
cutoff, no constraints, 22 atoms, so ``dim = 66``. The same topology and positions are
stored in ``systems/alanine_dipeptide/aldp.pdb`` (see its PROVENANCE.md).

Example
-------
>>> from physsample.systems.alanine_dipeptide import AlanineDipeptide
>>> aldp = AlanineDipeptide(temperature=300.0)
>>> x = aldp.default_positions()[None]          # (1, 66), nm
>>> aldp.energy(x).shape, aldp.dihedrals(x).shape
(torch.Size([1]), torch.Size([1, 2]))
"""

from __future__ import annotations

import mdtraj
import numpy as np
import openmm.unit as u
import torch

from physsample.systems.openmm_io import quiet_openmmtools
from physsample.systems.openmm_system import OpenMMSystem

__all__ = ["AlanineDipeptide", "backbone_dihedral_indices"]


def _openmmtools_aldp():
    """The openmmtools test system (imported lazily: openmmtools is slow to import)."""
    with quiet_openmmtools():
        from openmmtools.testsystems import AlanineDipeptideVacuum

        return AlanineDipeptideVacuum(constraints=None)


def backbone_dihedral_indices(
    topology: mdtraj.Topology,
) -> tuple[tuple[int, int, int, int], tuple[int, int, int, int]]:
    """Atom indices (0-based) of the single phi and psi dihedral of a dipeptide.

    Found with ``mdtraj.compute_phi`` / ``mdtraj.compute_psi``; phi is
    C(ACE)-N-CA-C and psi is N-CA-C-N(NME).
    """
    frame = mdtraj.Trajectory(np.zeros((1, topology.n_atoms, 3)), topology)
    phi, _ = mdtraj.compute_phi(frame)
    psi, _ = mdtraj.compute_psi(frame)
    if len(phi) != 1 or len(psi) != 1:
        raise ValueError(f"expected one phi and one psi, found {len(phi)} and {len(psi)}")
    return tuple(int(i) for i in phi[0]), tuple(int(i) for i in psi[0])


class AlanineDipeptide(OpenMMSystem):
    """Alanine dipeptide in vacuum (AMBER ff96, no constraints), 22 atoms, dim 66.

    Parameters
    ----------
    temperature
        Temperature in kelvin; energies are in kT = R T.
    platform
        OpenMM platform (``"CPU"`` or ``"Reference"``, the latter double precision).

    Attributes
    ----------
    phi_indices, psi_indices : tuple of int
        Atom indices of the backbone dihedrals phi and psi.
    """

    def __init__(
        self, temperature: float | u.Quantity = 300.0, platform: str = "Reference"
    ) -> None:
        test = _openmmtools_aldp()
        super().__init__(
            test.system,
            test.topology,
            temperature,
            platform=platform,
            name="aldp",
            positions=test.positions,
        )
        self.phi_indices, self.psi_indices = backbone_dihedral_indices(self.topology())

    def dihedrals(self, x: torch.Tensor | np.ndarray) -> torch.Tensor | np.ndarray:
        """Backbone dihedrals (phi, psi) in radians, in [-pi, pi], computed by mdtraj.

        Parameters
        ----------
        x
            Positions in nm, shape (batch, 66), tensor or array.

        Returns
        -------
        torch.Tensor or np.ndarray
            Shape (batch, 2); a tensor with the dtype and device of ``x`` if ``x`` is a
            tensor, else a float64 array. mdtraj works in float32 and no gradient flows.
        """
        xt = self.check_positions(torch.as_tensor(x))
        xyz = xt.detach().cpu().numpy().reshape(xt.shape[0], self.n_particles, 3)
        indices = np.array([self.phi_indices, self.psi_indices])
        if xt.shape[0] == 0:
            angles = np.zeros((0, 2))
        else:
            angles = mdtraj.compute_dihedrals(mdtraj.Trajectory(xyz, self.topology()), indices)
        if isinstance(x, torch.Tensor):
            return torch.as_tensor(angles, dtype=x.dtype, device=x.device)
        return angles.astype(np.float64)
