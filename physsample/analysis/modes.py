"""Mode coverage: nearest-mode assignment and the entropic mode coverage (EMC).

EMC = H(p) / log K, where p is the histogram of nearest-mode assignments of the
samples over the K modes and H(p) = -sum_k p_k log p_k: 1 when every mode gets the
same share, 0 when all samples sit in one mode.

Example
-------
>>> import numpy as np
>>> modes = np.array([[-1.0, 0.0], [1.0, 0.0]])
>>> emc(np.array([[-0.9, 0.1], [1.2, 0.0]]), modes)
1.0
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from physsample.analysis._util import positions, to_numpy
from physsample.errors import ConfigError, ShapeError

__all__ = ["nearest_mode", "mode_histogram", "emc"]


def nearest_mode(x: Any, modes: Any, chunk: int = 4096) -> np.ndarray:
    """Index of the nearest mode (Euclidean) of every sample.

    Parameters
    ----------
    x
        (N, dim) samples (tensor, array or Samples).
    modes
        (K, dim) mode locations, e.g. ``system.modes``.

    Returns
    -------
    np.ndarray
        (N,) int64 in [0, K).
    """
    xs, ms = positions(x, "x"), to_numpy(modes, "modes", ndim=2)
    if ms.shape[0] == 0 or ms.shape[1] != xs.shape[1]:
        raise ShapeError(f"nearest_mode: modes must be (K >= 1, {xs.shape[1]}), got {ms.shape}")
    sq_m = np.sum(ms * ms, axis=1)
    out = np.empty(len(xs), dtype=np.int64)
    for start in range(0, len(xs), chunk):
        block = xs[start : start + chunk]
        out[start : start + chunk] = np.argmin(sq_m[None, :] - 2.0 * block @ ms.T, axis=1)
    return out


def mode_histogram(x: Any, modes: Any, weights: Any = None) -> np.ndarray:
    """Share of the samples (or of the weight) nearest to each mode, shape (K,), sums to 1."""
    idx = nearest_mode(x, modes)
    k = to_numpy(modes, "modes", ndim=2).shape[0]
    w = None if weights is None else to_numpy(weights, "weights", ndim=1)
    if w is not None and (w.shape != idx.shape or np.any(w < 0) or not w.sum() > 0):
        raise ShapeError("mode_histogram: weights must be (N,), non-negative, with a positive sum")
    counts = np.bincount(idx, weights=w, minlength=k).astype(np.float64)
    return counts / counts.sum()


def emc(x: Any, modes: Any, weights: Any = None) -> float:
    """Entropic mode coverage: entropy of the nearest-mode histogram over log(K).

    Parameters
    ----------
    x
        (N, dim) samples, N >= 1.
    modes
        (K, dim) mode locations, K >= 2.
    weights
        Optional non-negative (N,) weights, e.g. ``samples.weights()`` for the coverage
        after reweighting; by default every sample counts once (the sampler's own
        coverage, as in the GMP paper).

    Returns
    -------
    float
        In [0, 1].
    """
    k = to_numpy(modes, "modes", ndim=2).shape[0]
    if k < 2:
        raise ConfigError("emc: need at least two modes")
    p = mode_histogram(x, modes, weights)
    p = p[p > 0]
    return float(-np.sum(p * np.log(p)) / math.log(k))
