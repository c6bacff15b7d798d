"""Collective variables of samples through mdtraj, and resampling to unweighted sets.

Samples of particle systems convert to ``mdtraj.Trajectory`` objects with
:meth:`physsample.Samples.to_mdtraj` (positions in nm; 2-D systems at z = 0); the
functions here compute collective variables on them, returning one value per sample in
the order of ``samples.x``, so that they can be fed to
:func:`~physsample.analysis.free_energy.free_energy_profile` together with the weights.

Example
-------
>>> import physsample as ps  # doctest: +SKIP
>>> aldp = ps.systems.get("aldp")  # doctest: +SKIP
>>> phi_psi = dihedrals(samples, aldp)  # (N, 2), radians  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

import mdtraj
import numpy as np
import torch

from physsample.errors import ShapeError
from physsample.samples import Samples
from physsample.systems.alanine_dipeptide import backbone_dihedral_indices

__all__ = ["trajectory", "pair_distance", "rmsd_to", "dihedrals", "resample_unweighted"]


def trajectory(samples: Samples, system: Any = None) -> mdtraj.Trajectory:
    """``samples.to_mdtraj(system)``: an mdtraj trajectory, one frame per sample."""
    return samples.to_mdtraj(system)


def pair_distance(samples: Samples, system: Any, i: int, j: int) -> np.ndarray:
    """Distance between atoms ``i`` and ``j`` (0-based) in every sample.

    Parameters
    ----------
    samples
        Samples of a particle system.
    system
        The system (anything with ``topology()``), or None for the samples' own.
    i, j
        Atom indices.

    Returns
    -------
    np.ndarray
        (N,) float64 in nm (reduced length units for the model particle systems).
    """
    traj = trajectory(samples, system)
    for k in (i, j):
        if not 0 <= int(k) < traj.n_atoms:
            raise ShapeError(f"pair_distance: atom index {k} not in [0, {traj.n_atoms})")
    return mdtraj.compute_distances(traj, [[int(i), int(j)]])[:, 0].astype(np.float64)


def rmsd_to(
    samples: Samples,
    system: Any,
    reference_xyz: Any,
    atom_indices: Any = None,
) -> np.ndarray:
    """RMSD of every sample to a reference structure after optimal superposition.

    Uses ``mdtraj.rmsd``: translation and proper rotation are fitted; no reflection and
    no relabelling of identical particles (for that see
    :func:`~physsample.analysis.alignment.align_pair`).

    Parameters
    ----------
    samples
        Samples of a particle system.
    system
        The system (with ``topology()``), or None for the samples' own.
    reference_xyz
        Reference positions in nm: (n_atoms, 3), flat (dim,), or an mdtraj trajectory
        (its first frame). 2-D systems may give (n_atoms, 2).
    atom_indices
        Atoms used for the fit and the RMSD (default all).

    Returns
    -------
    np.ndarray
        (N,) float64 in nm.
    """
    traj = trajectory(samples, system)
    if isinstance(reference_xyz, mdtraj.Trajectory):
        ref = reference_xyz[0]
    else:
        arr = (
            reference_xyz.detach().cpu().numpy()
            if isinstance(reference_xyz, torch.Tensor)
            else reference_xyz
        )
        arr = np.asarray(arr, dtype=np.float32).reshape(traj.n_atoms, -1)
        if arr.shape[1] == 2:
            arr = np.concatenate([arr, np.zeros_like(arr[:, :1])], axis=1)
        if arr.shape[1] != 3:
            raise ShapeError(
                f"rmsd_to: reference must have 2 or 3 coordinates per atom, got {arr.shape}"
            )
        ref = mdtraj.Trajectory(arr[None], traj.topology)
    return mdtraj.rmsd(traj, ref, 0, atom_indices=atom_indices).astype(np.float64)


def dihedrals(samples: Samples, system: Any = None) -> np.ndarray:
    """Backbone dihedrals (phi, psi) of a dipeptide such as alanine dipeptide.

    Parameters
    ----------
    samples
        Samples of the molecule.
    system
        The system (with ``topology()``), or None for the samples' own.

    Returns
    -------
    np.ndarray
        (N, 2) float64 radians in [-pi, pi]: columns phi (C-N-CA-C) and psi
        (N-CA-C-N), found by mdtraj's ``compute_phi`` / ``compute_psi``.
    """
    traj = trajectory(samples, system)
    phi, psi = backbone_dihedral_indices(traj.topology)
    return mdtraj.compute_dihedrals(traj, np.array([phi, psi])).astype(np.float64)


def resample_unweighted(samples: Samples, n: int, seed: int = 0) -> Samples:
    """``n`` unweighted samples drawn with replacement with probabilities ``samples.weights()``.

    Use it when a tool needs plain configurations (a viewer, a W2 against reference
    data). Duplicates are expected where weights are uneven; the metadata records the
    original size and Kish ESS. Unweighted input is drawn uniformly.

    Returns
    -------
    Samples
        Without ``log_weights``.
    """
    generator = torch.Generator(device=samples.device).manual_seed(int(seed))
    return samples.resample(int(n), generator=generator)
