"""Geometry of particle configurations: pair vectors and distances, starting clusters.

Positions are flat, ``(batch, n_particles * spatial_dim)``, ordered (x1, y1[, z1], x2, ...),
as everywhere in :mod:`physsample.systems`. Pairs are the upper triangle ``i < j`` in the
order of :func:`torch.triu_indices`, so there are ``n_particles * (n_particles - 1) / 2``
of them. The diagonal ``i == j`` is never formed, so the gradient of a distance is finite
unless two distinct particles coincide.

Example
-------
>>> import torch
>>> x = torch.tensor([[0.0, 0.0, 3.0, 4.0]])          # two particles in 2-D
>>> pair_distances(x, n_particles=2, spatial_dim=2)
tensor([[5.]])
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING

import numpy as np
import torch

from physsample.errors import ShapeError

if TYPE_CHECKING:
    import openmm
    import openmm.unit

__all__ = [
    "n_pairs",
    "pair_indices",
    "pair_vectors",
    "pair_distances",
    "as_configuration",
    "fcc_cluster",
    "relax_with_openmm",
]


def n_pairs(n_particles: int) -> int:
    """Number of unordered pairs, ``n_particles * (n_particles - 1) // 2``."""
    return n_particles * (n_particles - 1) // 2


def pair_indices(n_particles: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Indices ``(i, j)`` with ``i < j`` of all pairs, shape (2, n_pairs), dtype long."""
    return torch.triu_indices(n_particles, n_particles, offset=1, device=device)


def _as_particles(x: torch.Tensor, n_particles: int, spatial_dim: int) -> torch.Tensor:
    if x.ndim != 2 or x.shape[1] != n_particles * spatial_dim:
        raise ShapeError(
            f"expected flat positions of shape (batch, {n_particles * spatial_dim}) for "
            f"{n_particles} particles in {spatial_dim}-D; got {tuple(x.shape)}"
        )
    return x.reshape(x.shape[0], n_particles, spatial_dim)


def pair_vectors(
    x: torch.Tensor,
    n_particles: int,
    spatial_dim: int,
    pairs: torch.Tensor | None = None,
) -> torch.Tensor:
    """Difference vectors ``x_j - x_i`` over pairs ``i < j``.

    Parameters
    ----------
    x
        Flat positions, shape (batch, n_particles * spatial_dim), any length unit.
    n_particles, spatial_dim
        Layout of one configuration.
    pairs
        Optional precomputed :func:`pair_indices` (moved to ``x.device`` if needed).

    Returns
    -------
    torch.Tensor
        Shape (batch, n_pairs, spatial_dim), same dtype and device as ``x``.
    """
    p = _as_particles(x, n_particles, spatial_dim)
    if pairs is None:
        pairs = pair_indices(n_particles, device=x.device)
    pairs = pairs.to(x.device)
    return p[:, pairs[1]] - p[:, pairs[0]]


def pair_distances(
    x: torch.Tensor,
    n_particles: int,
    spatial_dim: int,
    pairs: torch.Tensor | None = None,
) -> torch.Tensor:
    """Euclidean distances ``|x_i - x_j|`` over pairs ``i < j``.

    Parameters
    ----------
    x
        Flat positions, shape (batch, n_particles * spatial_dim), any length unit.
    n_particles, spatial_dim
        Layout of one configuration.
    pairs
        Optional precomputed :func:`pair_indices`.

    Returns
    -------
    torch.Tensor
        Shape (batch, n_pairs), in the length unit of ``x``. Differentiable wherever no
        two particles coincide.
    """
    return torch.linalg.vector_norm(pair_vectors(x, n_particles, spatial_dim, pairs), dim=-1)


def as_configuration(
    x: torch.Tensor | np.ndarray, n_particles: int, spatial_dim: int
) -> np.ndarray:
    """One configuration, flat (dim,) or (1, dim), as a float64 array (n_particles, spatial_dim).

    Raises
    ------
    ShapeError
        If ``x`` does not hold exactly one configuration.
    """
    dim = n_particles * spatial_dim
    arr = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    if arr.shape not in ((dim,), (1, dim)):
        raise ShapeError(
            f"expected one configuration of shape ({dim},) or (1, {dim}); got {arr.shape}"
        )
    return arr.astype(np.float64).reshape(n_particles, spatial_dim)


def fcc_cluster(n_particles: int, nearest_neighbour: float = 1.0) -> np.ndarray:
    """The ``n_particles`` sites of an fcc lattice closest to a lattice site.

    Ties in the distance are broken by lattice coordinates, so the result is
    deterministic. For 13 and 55 particles the cluster is made of closed shells
    (a cuboctahedron and its next shells).

    Parameters
    ----------
    n_particles
        Number of sites.
    nearest_neighbour
        Nearest-neighbour distance of the lattice (length unit of the result).

    Returns
    -------
    numpy.ndarray
        Shape (n_particles, 3), float64, centre of mass at the origin.
    """
    k = int(np.ceil((n_particles / 4.0) ** (1.0 / 3.0))) + 2
    grid = range(-k, k + 1)
    # fcc = integer points with an even coordinate sum; nearest neighbours at sqrt(2)
    sites = [s for s in itertools.product(grid, grid, grid) if sum(s) % 2 == 0]
    sites.sort(key=lambda s: (s[0] ** 2 + s[1] ** 2 + s[2] ** 2, s))
    out = np.asarray(sites[:n_particles], dtype=np.float64) * (nearest_neighbour / np.sqrt(2.0))
    return out - out.mean(axis=0)


def relax_with_openmm(
    system: openmm.System,
    positions: openmm.unit.Quantity,
    tolerance: float = 1e-6,
    max_iterations: int = 0,
) -> np.ndarray:
    """Local energy minimum of an OpenMM system, found from ``positions``.

    Uses ``openmm.LocalEnergyMinimizer`` (L-BFGS) on the Reference platform, so the
    result is deterministic.

    Parameters
    ----------
    system
        An ``openmm.System``.
    positions
        Starting positions, an OpenMM Quantity (n_atoms, 3) in nm.
    tolerance
        RMS force at which to stop, kJ/mol/nm.
    max_iterations
        Iteration limit; 0 means until converged.

    Returns
    -------
    numpy.ndarray
        Minimised positions in nm, shape (n_atoms, 3), float64.
    """
    import openmm
    import openmm.unit as u

    from physsample.systems.openmm_io import make_context

    context = make_context(system, "Reference")
    context.setPositions(positions)
    openmm.LocalEnergyMinimizer.minimize(context, tolerance, max_iterations)
    state = context.getState(getPositions=True)
    return np.asarray(state.getPositions(asNumpy=True).value_in_unit(u.nanometer))
