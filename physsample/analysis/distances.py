"""Sample-based discrepancies: interatomic-distance TV and MMD.

Example
-------
>>> import numpy as np
>>> x = np.random.default_rng(0).normal(size=(500, 8))
>>> distance_tv(x, x, n_particles=4, spatial_dim=2)
0.0
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from physsample.analysis._util import positions, subsample
from physsample.errors import ConfigError, ShapeError
from physsample.systems.geometry import pair_distances

__all__ = ["all_pair_distances", "distance_tv", "mmd", "median_bandwidth"]


def all_pair_distances(x: Any, n_particles: int, spatial_dim: int) -> np.ndarray:
    """Every interparticle distance of every configuration, flattened.

    Parameters
    ----------
    x
        (N, n_particles * spatial_dim) positions (tensor, array or Samples).

    Returns
    -------
    np.ndarray
        (N * n_particles * (n_particles - 1) / 2,) float64, length unit of ``x``.
    """
    xt = torch.from_numpy(positions(x, "x"))
    return pair_distances(xt, int(n_particles), int(spatial_dim)).numpy().ravel()


def distance_tv(
    x: Any,
    y: Any,
    n_particles: int,
    spatial_dim: int,
    bins: int = 200,
    *,
    normalize: str = "in_range",
) -> float:
    """Total variation between histograms of all interparticle distances.

    TV = 1/2 sum_b |p_b - q_b| over ``bins`` equal-width bins spanning the reference
    distances (min to max of y's), p from the generated set x and q from y.

    Parameters
    ----------
    x
        Generated configurations (N, n * d).
    y
        Reference configurations (M, n * d).
    n_particles, spatial_dim
        Layout of one configuration.
    bins
        Number of bins (200 in BENCHMARKS.md).
    normalize
        ``"in_range"`` (default, as the DEM/AS evaluation code): each histogram is
        divided by its own count inside the reference range, so generated distances
        outside the range are ignored. ``"total"``: x's histogram is divided by all of
        x's distances, so mass outside the range counts fully towards the TV.

    Returns
    -------
    float
        In [0, 1]; 1.0 if no generated distance falls inside the reference range.
    """
    if normalize not in ("in_range", "total"):
        raise ConfigError(
            f"distance_tv: normalize must be 'in_range' or 'total', got {normalize!r}"
        )
    dx = all_pair_distances(x, n_particles, spatial_dim)
    dy = all_pair_distances(y, n_particles, spatial_dim)
    if dx.size == 0 or dy.size == 0:
        raise ShapeError("distance_tv: both sets need at least one configuration")
    q, edges = np.histogram(dy, bins=int(bins))
    p, _ = np.histogram(dx, bins=edges)
    denominator = p.sum() if normalize == "in_range" else dx.size
    if denominator == 0:
        return 1.0
    return float(0.5 * np.abs(p / denominator - q / q.sum()).sum())


def median_bandwidth(z: np.ndarray, max_points: int = 1000, seed: int = 0) -> float:
    """Median heuristic: the median Euclidean distance between distinct points of ``z``."""
    z = subsample(z, max_points, seed)
    sq = np.sum(z * z, axis=1)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2.0 * z @ z.T, 0.0)
    iu = np.triu_indices(len(z), k=1)
    positive = d2[iu][d2[iu] > 0]
    if positive.size == 0:
        return 1.0
    return float(math.sqrt(np.median(positive)))


def _mean_kernel(a: np.ndarray, b: np.ndarray, h: float, exclude_diagonal: bool) -> float:
    """Mean of exp(-|a_i - b_j|^2 / (2 h^2)), optionally over i != j only."""
    sa, sb = np.sum(a * a, axis=1), np.sum(b * b, axis=1)
    k = np.exp(-np.maximum(sa[:, None] + sb[None, :] - 2.0 * a @ b.T, 0.0) / (2.0 * h * h))
    if not exclude_diagonal:
        return float(k.mean())
    n = len(a)
    return float((k.sum() - np.trace(k)) / (n * (n - 1)))


def mmd(
    x: Any,
    y: Any,
    bandwidth: float | None = None,
    *,
    squared: bool = False,
    max_samples: int | None = 4000,
    seed: int = 0,
) -> float:
    """Maximum mean discrepancy with the Gaussian (RBF) kernel.

    k(a, b) = exp(-|a - b|^2 / (2 h^2)); the unbiased U-statistic

        MMD^2_u = mean_{i != j} k(x_i, x_j) + mean_{i != j} k(y_i, y_j) - 2 mean k(x_i, y_j).

    Parameters
    ----------
    x, y
        (Nx, dim), (Ny, dim) samples, Nx, Ny >= 2.
    bandwidth
        h, in the unit of the samples; None for the median heuristic (median distance
        between the points of both sets pooled, at most 1000 of them).
    squared
        Return MMD^2_u itself (unbiased, may be slightly negative) instead of
        sqrt(max(MMD^2_u, 0)).
    max_samples, seed
        Subsampling of each set (the kernel matrices are dense).

    Returns
    -------
    float
    """
    xs = subsample(positions(x, "x"), max_samples, seed)
    ys = subsample(positions(y, "y"), max_samples, seed + 1)
    if len(xs) < 2 or len(ys) < 2 or xs.shape[1] != ys.shape[1]:
        raise ShapeError(f"mmd: need (N >= 2, dim) arrays of equal dim, got {xs.shape}, {ys.shape}")
    h = median_bandwidth(np.concatenate([xs, ys]), seed=seed) if bandwidth is None else bandwidth
    if not float(h) > 0:
        raise ConfigError(f"mmd: bandwidth must be positive, got {h}")
    value = (
        _mean_kernel(xs, xs, h, True)
        + _mean_kernel(ys, ys, h, True)
        - 2.0 * _mean_kernel(xs, ys, h, False)
    )
    return float(value) if squared else math.sqrt(max(value, 0.0))
