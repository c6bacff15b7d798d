"""Small input-handling helpers shared by the analysis modules (private)."""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np
import torch

from physsample.errors import ConfigError, ShapeError

__all__ = ["Estimate", "to_numpy", "positions", "log_weights_of", "order_interval", "subsample"]


class Estimate(NamedTuple):
    """A point estimate and its confidence interval.

    Unpacks as ``value, (low, high) = estimate``.

    Attributes
    ----------
    value : float
    ci : tuple of float
        (low, high), by default a 95% interval.
    """

    value: float
    ci: tuple[float, float]

    @property
    def low(self) -> float:
        return self.ci[0]

    @property
    def high(self) -> float:
        return self.ci[1]

    def __str__(self) -> str:
        return f"{self.value:.4g} [{self.ci[0]:.4g}, {self.ci[1]:.4g}]"


def to_numpy(a: Any, what: str = "array", ndim: int | None = None) -> np.ndarray:
    """A float64 numpy copy of a tensor / array / sequence, optionally checking ndim."""
    if isinstance(a, torch.Tensor):
        a = a.detach().cpu().to(torch.float64).numpy()
    arr = np.asarray(a, dtype=np.float64)
    if ndim is not None and arr.ndim != ndim:
        raise ShapeError(f"{what}: expected a {ndim}-D array, got shape {arr.shape}")
    return arr


def positions(samples: Any, what: str = "x") -> np.ndarray:
    """Positions (N, dim) as float64 numpy, from Samples, a tensor or an array."""
    return to_numpy(getattr(samples, "x", samples), what, ndim=2)


def log_weights_of(samples_or_log_w: Any, what: str = "log_w") -> np.ndarray | None:
    """log-weights (N,) float64 from Samples (None if unweighted) or an array/tensor."""
    if hasattr(samples_or_log_w, "log_weights"):
        lw = samples_or_log_w.log_weights
        return None if lw is None else to_numpy(lw, what, ndim=1)
    return to_numpy(samples_or_log_w, what, ndim=1)


def check_confidence(confidence: float) -> float:
    if not 0.0 < float(confidence) < 1.0:
        raise ConfigError(f"confidence must be in (0, 1), got {confidence}")
    return float(confidence)


def order_interval(values: np.ndarray, confidence: float, axis: int = 0) -> tuple:
    """Percentile interval from order statistics, safe with infinite values.

    With B values along ``axis`` and alpha = 1 - confidence, the bounds are the
    ceil(B alpha / 2)-th smallest and the ceil(B alpha / 2)-th largest values (no
    interpolation, so +-inf replicates give +-inf bounds instead of NaN). NaN values
    sort last.
    """
    alpha = 1.0 - check_confidence(confidence)
    ordered = np.sort(values, axis=axis)
    b = ordered.shape[axis]
    k = max(int(math.ceil(b * alpha / 2.0)) - 1, 0)
    return np.take(ordered, k, axis=axis), np.take(ordered, b - 1 - k, axis=axis)


def subsample(a: np.ndarray, max_samples: int | None, seed: int) -> np.ndarray:
    """At most ``max_samples`` rows of ``a``, drawn without replacement (seeded)."""
    if max_samples is None or len(a) <= int(max_samples):
        return a
    idx = np.random.default_rng(seed).choice(len(a), int(max_samples), replace=False)
    return a[np.sort(idx)]
