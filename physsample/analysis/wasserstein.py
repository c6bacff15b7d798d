"""Optimal-transport metrics of BENCHMARKS.md: geometric W2, energy W2 and Sinkhorn.

All three compare a generated set x with a reference set y, sample against sample
(uniform weights), with POT:

- :func:`geometric_w2`: exact OT (``ot.emd2``) on the squared geometric distances
  min_{P, R} |x - P y R|^2 of :mod:`physsample.analysis.alignment`; returns W2.
- :func:`energy_w2`: exact 1-D W2 between energy values, ``sqrt(ot.emd2_1d)``.
- :func:`sinkhorn`: entropic OT cost with squared Euclidean ground cost.

Example
-------
>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> x = rng.normal(size=(200, 8))
>>> round(geometric_w2(x, x, n_particles=4, spatial_dim=2), 6)
0.0
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import ot

from physsample.analysis._util import positions, subsample, to_numpy
from physsample.analysis.alignment import geometric_distance_matrix
from physsample.errors import ConfigError, ShapeError

__all__ = ["geometric_w2", "energy_w2", "sinkhorn", "exact_w2"]

_EMD_MAX_ITER = 10_000_000


def exact_w2(cost_sq: np.ndarray) -> float:
    """sqrt of the exact OT cost ``ot.emd2`` between uniform weights on a squared-cost matrix.

    Parameters
    ----------
    cost_sq
        (Nx, Ny) squared distances.
    """
    cost_sq = np.ascontiguousarray(cost_sq, dtype=np.float64)
    nx, ny = cost_sq.shape
    value = ot.emd2(np.full(nx, 1.0 / nx), np.full(ny, 1.0 / ny), cost_sq, numItermax=_EMD_MAX_ITER)
    return math.sqrt(max(float(value), 0.0))


def geometric_w2(
    x: Any,
    y: Any,
    n_particles: int,
    spatial_dim: int,
    *,
    max_samples: int | None = 2000,
    seed: int = 0,
    search: str = "best",
    **search_options: Any,
) -> float:
    """W2 between two sets of particle configurations, up to rotation, reflection and relabelling.

    The ground cost between configurations is the geometric distance
    min over permutations P and orthogonal R of |x - P y R| (centre of mass removed),
    searched as described in :mod:`physsample.analysis.alignment`; then exact OT
    (``ot.emd2``) on the squared costs, and the square root (W2, not W2^2).

    Parameters
    ----------
    x
        Generated configurations, (Nx, n_particles * spatial_dim): tensor, array or
        unweighted Samples (resample weighted ones first, see
        :func:`~physsample.analysis.trajectories.resample_unweighted`).
    y
        Reference configurations, (Ny, n_particles * spatial_dim).
    n_particles, spatial_dim
        Layout of one configuration (spatial_dim 2 or 3).
    max_samples
        Each set is subsampled without replacement to at most this many
        configurations (2000 in the published tables); None keeps all.
    seed
        Seed of the subsampling.
    search
        ``"best"`` (exact for <= 4 particles, multi-start alternating search above) or
        ``"single_pass"`` (one Hungarian + one Kabsch, the DEM/AS/ASBS evaluation code).
    **search_options
        ``exact_up_to``, ``n_iter``, ``n_starts``, ``n_random``, ``n_threads`` of
        :func:`~physsample.analysis.alignment.geometric_distance_matrix`.

    Returns
    -------
    float
        W2 in the length unit of the positions.

    Notes
    -----
    Measured for 2000 x 2000 pairs on 2 CPU cores shared with other jobs (load 5 to 8):
    DW-4 11 s (exact search; 6 s single pass), LJ-13 260 s (default search; 40 s
    single pass), plus a one-time numba compilation of about 20 s.
    """
    _reject_weighted(x, "geometric_w2")
    xs = subsample(positions(x, "x"), max_samples, seed)
    ys = subsample(positions(y, "y"), max_samples, seed + 1)
    if len(xs) == 0 or len(ys) == 0:
        raise ShapeError("geometric_w2: both sets need at least one configuration")
    dist = geometric_distance_matrix(
        xs, ys, n_particles, spatial_dim, search=search, **search_options
    )
    return exact_w2(dist * dist)


def energy_w2(e_x: Any, e_y: Any) -> float:
    """Exact 1-D W2 between two sets of energies: ``sqrt(ot.emd2_1d(e_x, e_y))``.

    Parameters
    ----------
    e_x, e_y
        Energies (Nx,), (Ny,) in kT (reduced), uniform weights; tensors or arrays.

    Returns
    -------
    float
        W2 in kT (POT's ``emd2_1d`` returns W2^2 with its default squared metric).

    Raises
    ------
    ShapeError
        On empty or non-finite input (drop or clip diverged samples first, and say so).
    """
    ex, ey = to_numpy(e_x, "e_x", ndim=1), to_numpy(e_y, "e_y", ndim=1)
    if ex.size == 0 or ey.size == 0:
        raise ShapeError("energy_w2: both energy sets need at least one value")
    if not (np.all(np.isfinite(ex)) and np.all(np.isfinite(ey))):
        raise ShapeError("energy_w2: energies must be finite; drop or clip diverged samples")
    return math.sqrt(max(float(ot.emd2_1d(ex, ey)), 0.0))


def sinkhorn(
    x: Any,
    y: Any,
    eps: float,
    *,
    max_samples: int | None = 2000,
    seed: int = 0,
    max_iter: int = 100_000,
    tol: float = 1e-6,
) -> float:
    """Entropic OT cost between two point sets, squared Euclidean ground cost.

    Solves min_P <P, C> - eps H(P) over couplings of the uniform weights with
    ``C_ij = |x_i - y_j|^2``, by POT's log-domain Sinkhorn (``ot.sinkhorn2`` with
    ``method="sinkhorn_log"``, which does not underflow for small eps), and returns
    the transport part <P_eps, C> (POT's ``sinkhorn2`` value, no entropy term). It
    tends to W2^2 as eps -> 0 and to the mean of C (independent coupling) as eps -> inf.

    Parameters
    ----------
    x, y
        (Nx, dim), (Ny, dim) samples (generated, reference).
    eps
        Entropic regularisation, in squared length units: state it beside the number.
    max_samples, seed
        Subsampling of each set (2000 vs 2000 in the published tables).
    max_iter, tol
        Sinkhorn iteration limit and stopping threshold (Euclidean norm of the
        violation of the second marginal). POT warns if the limit is reached first.

    Returns
    -------
    float
        Squared length units.

    Notes
    -----
    Each iteration touches the whole Nx x Ny matrix (about 20 to 50 ms at 2000 x 2000
    on one CPU core), and the number of iterations grows like max(C) / eps: small eps
    on widely spread samples takes minutes.
    """
    if not float(eps) > 0:
        raise ConfigError(f"sinkhorn: eps must be positive, got {eps}")
    xs = subsample(positions(x, "x"), max_samples, seed)
    ys = subsample(positions(y, "y"), max_samples, seed + 1)
    if len(xs) == 0 or len(ys) == 0 or xs.shape[1] != ys.shape[1]:
        raise ShapeError(f"sinkhorn: need non-empty sets of equal dim, got {xs.shape}, {ys.shape}")
    cost = ot.dist(xs, ys, metric="sqeuclidean")
    a, b = np.full(len(xs), 1.0 / len(xs)), np.full(len(ys), 1.0 / len(ys))
    value = ot.sinkhorn2(
        a, b, cost, float(eps), method="sinkhorn_log", numItermax=int(max_iter), stopThr=tol,
        warn=True,
    )  # fmt: skip
    return float(value)


def _reject_weighted(x: Any, what: str) -> None:
    if getattr(x, "log_weights", None) is not None:
        raise ConfigError(
            f"{what}: the samples are weighted; compare resample_unweighted(samples, n) "
            "(or the raw model samples, Samples(samples.x)) instead"
        )
