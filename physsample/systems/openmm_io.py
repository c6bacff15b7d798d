"""Small helpers between torch positions and OpenMM / mdtraj objects.

Lengths are in nm, energies in kJ/mol on the OpenMM side. Flat positions of a
2-D particle system are embedded at z = 0.
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Iterator

import mdtraj
import numpy as np
import openmm
import openmm.unit as u
import torch

__all__ = [
    "particle_topology",
    "positions_to_openmm",
    "openmm_energy",
    "make_context",
    "quiet_openmmtools",
]


def particle_topology(n_particles: int, residue_name: str = "PAR") -> mdtraj.Topology:
    """One chain, one residue and one (argon-like) atom per particle."""
    top = mdtraj.Topology()
    chain = top.add_chain()
    for i in range(n_particles):
        residue = top.add_residue(residue_name, chain, resSeq=i + 1)
        top.add_atom(f"P{i + 1}", mdtraj.element.argon, residue)
    return top


def positions_to_openmm(x: torch.Tensor | np.ndarray, n_particles: int, spatial_dim: int):
    """Flat positions (dim,) or (1, dim) -> OpenMM Quantity (n_particles, 3) in nm."""
    arr = np.asarray(x.detach().cpu() if isinstance(x, torch.Tensor) else x, dtype=np.float64)
    arr = arr.reshape(n_particles, spatial_dim)
    if spatial_dim == 2:
        arr = np.concatenate([arr, np.zeros((n_particles, 1))], axis=1)
    return u.Quantity(arr, u.nanometer)


def make_context(system: openmm.System, platform: str = "Reference") -> openmm.Context:
    """A Context with a dummy integrator, for energy and force evaluation."""
    integrator = openmm.VerletIntegrator(0.001 * u.picoseconds)
    return openmm.Context(system, integrator, openmm.Platform.getPlatformByName(platform))


def openmm_energy(system: openmm.System, positions, platform: str = "Reference") -> float:
    """Potential energy in kJ/mol of ``system`` at ``positions`` (nm)."""
    context = make_context(system, platform)
    context.setPositions(positions)
    state = context.getState(getEnergy=True)
    return state.getPotentialEnergy().value_in_unit(u.kilojoule_per_mole)


@contextlib.contextmanager
def quiet_openmmtools() -> Iterator[None]:
    """Silence openmmtools' (and pymbar's) import banners and experimental-API warnings.

    Exceptions still propagate; only what is printed inside the block is dropped.
    """
    logger = logging.getLogger("openmmtools")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        logger.setLevel(level)
