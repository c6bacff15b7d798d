"""Free energies with confidence intervals, from weighted samples or from MD output.

- :func:`free_energy`: F = -kT log Z from importance log-weights.
- :func:`free_energy_difference`: Delta F = -kT log(P_A / P_B) = F_A - F_B between two
  states (the BENCHMARKS.md definition: positive when A is less populated than B),
  with P_A, P_B from self-normalised weights (or plain fractions for MD output).
- :func:`free_energy_profile`: F(s) = -kT log p(s) along one or two collective
  variables by weighted histograms, shifted to a minimum of 0.
- :func:`mbar_free_energies`: multistate reweighting with pymbar's MBAR.

Confidence intervals are percentile bootstrap intervals. Weighted samples (a sampler's
independent draws) are resampled i.i.d.; unweighted samples (MD/MCMC output) are
resampled in blocks whose length follows from the integrated autocorrelation time, see
:mod:`physsample.analysis.bootstrap`.

Units: energies are reduced (kT = 1 at the system's temperature), so with the default
``kT=1.0`` free energies are in kT; pass e.g. ``kT=2.494`` to get kJ/mol at 300 K.

Example
-------
>>> import numpy as np, torch
>>> from physsample import Samples
>>> x = torch.from_numpy(np.random.default_rng(0).normal(size=(4000, 1)))
>>> est, (low, high) = free_energy_difference(
...     Samples(x), lambda x: x[:, 0] < 0, lambda x: x[:, 0] >= 0, n_bootstrap=200)
>>> bool(low < 0.0 < high)
True
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import torch

from physsample.analysis._util import Estimate, check_confidence, order_interval, to_numpy
from physsample.analysis.bootstrap import plan_bootstrap
from physsample.analysis.weights import log_z
from physsample.errors import ConfigError, ShapeError

__all__ = [
    "free_energy",
    "free_energy_difference",
    "state_probabilities",
    "free_energy_profile",
    "FreeEnergyProfile",
    "mbar_free_energies",
    "MBARResult",
]

State = Callable[[torch.Tensor], Any] | np.ndarray | torch.Tensor | Sequence[bool]


def free_energy(
    samples_or_log_w: Any,
    kT: float = 1.0,
    n_bootstrap: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> Estimate:
    """F = -kT log Z from importance log-weights, with a bootstrap interval.

    Parameters
    ----------
    samples_or_log_w
        Weighted :class:`~physsample.Samples` or log-weights (N,).
    kT
        Energy unit of the result (1.0: in kT).
    n_bootstrap, seed, confidence
        As for :func:`~physsample.analysis.weights.log_z`.

    Returns
    -------
    Estimate
        F and its interval (the interval of log Z, mapped through -kT).
    """
    _check_kt(kT)
    value, (low, high) = log_z(samples_or_log_w, n_bootstrap, seed, confidence)
    return Estimate(-kT * value, (-kT * high, -kT * low))


def _mask(state: State, x: torch.Tensor, what: str) -> np.ndarray:
    """Boolean (N,) numpy mask from a callable on positions or a boolean array."""
    value = state(x) if callable(state) else state
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    arr = np.asarray(value)
    if arr.dtype != np.bool_ or arr.shape != (x.shape[0],):
        raise ShapeError(
            f"{what}: a state must give a boolean mask of shape ({x.shape[0]},), got "
            f"{arr.dtype} {arr.shape}"
        )
    return arr


def _normalised_weights(samples: Any) -> np.ndarray:
    """w_i / max w (float64), or ones for unweighted samples."""
    if samples.log_weights is None:
        return np.ones(len(samples))
    lw = to_numpy(samples.log_weights, "log_weights", ndim=1)
    if not np.any(np.isfinite(lw)):
        raise ShapeError("free energies: no finite log-weight")
    return np.exp(lw - np.max(lw[np.isfinite(lw)]))


def _log_ratio(wa: np.ndarray, wb: np.ndarray, idx: np.ndarray | None = None):
    """log(sum wa) - log(sum wb), over all samples or over each row of ``idx`` (k, N).

    -inf when A has no weight, +inf when B has none (NaN when neither has).
    """
    sa = wa.sum() if idx is None else wa[idx].sum(axis=1)
    sb = wb.sum() if idx is None else wb[idx].sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.log(sa) - np.log(sb)


def state_probabilities(samples: Any, states: Sequence[State]) -> np.ndarray:
    """Self-normalised probabilities of several states, shape (n_states,).

    Parameters
    ----------
    samples
        :class:`~physsample.Samples` (weighted or not).
    states
        Callables mapping positions (N, dim) to boolean masks (N,), or the masks.
    """
    w = _normalised_weights(samples)
    return np.array([w[_mask(s, samples.x, "state_probabilities")].sum() / w.sum() for s in states])


def free_energy_difference(
    samples: Any,
    in_a: State,
    in_b: State,
    n_bootstrap: int = 1000,
    seed: int = 0,
    kT: float = 1.0,
    *,
    confidence: float = 0.95,
    block_length: int | None = None,
) -> Estimate:
    """Delta F = -kT log(P_A / P_B) = F_A - F_B, with a bootstrap confidence interval.

    Parameters
    ----------
    samples
        :class:`~physsample.Samples`. With ``log_weights`` the probabilities are
        self-normalised importance estimates and the bootstrap is i.i.d.; without, they
        are plain fractions and the bootstrap resamples blocks within chains (MD/MCMC
        output; see :mod:`physsample.analysis.bootstrap`).
    in_a, in_b
        States: callables mapping positions (N, dim) (``samples.x``) to boolean masks
        (N,), e.g. ``lambda x: x[:, 0] < 0``, or the masks themselves.
    n_bootstrap
        Number of bootstrap replicates.
    seed
        Seed of the bootstrap.
    kT
        Energy unit of the result (1.0: in kT).
    confidence
        Coverage of the percentile interval.
    block_length
        Override the automatic block length (unweighted samples).

    Returns
    -------
    Estimate
        ``(value, (low, high))`` in units of ``kT``; +inf if no sample (or no weight)
        falls in A, -inf if none falls in B.
    """
    a = _mask(in_a, samples.x, "free_energy_difference")
    b = _mask(in_b, samples.x, "free_energy_difference")
    w = _normalised_weights(samples)
    wa, wb = w * a, w * b
    _check_kt(kT)
    value = float(-kT * _log_ratio(wa, wb))
    if not math.isfinite(value):
        warnings.warn("free_energy_difference: a state has no samples (or no weight)", stacklevel=2)
    plan = plan_bootstrap(samples, [a, b], block_length=block_length)
    rng = np.random.default_rng(seed)
    reps = np.concatenate([_log_ratio(wa, wb, idx) for idx in plan.indices(n_bootstrap, rng)])
    low, high = order_interval(-kT * reps, check_confidence(confidence))
    return Estimate(value, (float(low), float(high)))


@dataclass(frozen=True)
class FreeEnergyProfile:
    """A free-energy profile F(s) on a 1-D or 2-D grid of bins.

    Attributes
    ----------
    edges : tuple of np.ndarray
        Bin edges per collective variable, (bins_k + 1,) each.
    f : np.ndarray
        F per bin, shape (bins_1,) or (bins_1, bins_2), in units of ``kT``, shifted so
        that its minimum is 0; +inf in empty bins.
    low, high : np.ndarray
        Bootstrap interval of F - min F per bin (each replicate shifted to its own
        minimum), same shape.
    probability : np.ndarray
        Probability of each bin (self-normalised over all samples, including those
        outside the grid).
    counts : np.ndarray
        Number of samples in each bin (unweighted).
    kT, confidence : float
    bootstrap : dict
        The bootstrap plan used (:meth:`~physsample.analysis.bootstrap.BootstrapPlan.describe`).
    """

    edges: tuple[np.ndarray, ...]
    f: np.ndarray
    low: np.ndarray
    high: np.ndarray
    probability: np.ndarray
    counts: np.ndarray
    kT: float
    confidence: float
    bootstrap: dict[str, Any] = field(default_factory=dict)

    @property
    def centers(self) -> tuple[np.ndarray, ...]:
        """Bin centres per collective variable."""
        return tuple(0.5 * (e[1:] + e[:-1]) for e in self.edges)

    @property
    def ndim(self) -> int:
        return len(self.edges)


def _cv_values(samples: Any, cv: Any) -> np.ndarray:
    """CV values as float64 (N, D), D in (1, 2)."""
    values = cv(samples.x) if callable(cv) else cv
    arr = to_numpy(values, "cv")
    arr = arr[:, None] if arr.ndim == 1 else arr
    if arr.ndim != 2 or arr.shape[0] != len(samples) or arr.shape[1] not in (1, 2):
        raise ShapeError(
            f"free_energy_profile: cv must give (N,) or (N, 2) values, got {arr.shape}"
        )
    return arr


def _edges(values: np.ndarray, bins: Any, range_: Any) -> tuple[np.ndarray, ...]:
    dims = values.shape[1]
    bins = list(bins) if isinstance(bins, (list, tuple)) and dims > 1 else [bins] * dims
    ranges = list(range_) if range_ is not None and dims > 1 else [range_] * dims
    finite = values[np.all(np.isfinite(values), axis=1)]
    return tuple(
        np.histogram_bin_edges(finite[:, k], bins=bins[k], range=ranges[k]) for k in range(dims)
    )


def _bin_index(values: np.ndarray, edges: tuple[np.ndarray, ...]) -> np.ndarray:
    """Flat bin index (N,) of each sample, -1 outside the grid (right edges included)."""
    shape = tuple(len(e) - 1 for e in edges)
    cells, inside = [], np.ones(len(values), dtype=bool)
    for k, e in enumerate(edges):
        i = np.searchsorted(e, values[:, k], side="right") - 1
        i[values[:, k] == e[-1]] = len(e) - 2
        inside &= (i >= 0) & (i < len(e) - 1)
        cells.append(np.clip(i, 0, len(e) - 2))
    return np.where(inside, np.ravel_multi_index(cells, shape), -1)


def _profile_from_probability(p: np.ndarray, volume: np.ndarray, kT: float) -> np.ndarray:
    """-kT log(p / volume), shifted to min 0 along the last axis (rows: replicates)."""
    with np.errstate(divide="ignore"):
        f = -kT * np.log(p / volume)
    finite_min = np.min(np.where(np.isfinite(f), f, np.inf), axis=-1, keepdims=True)
    return f - np.where(np.isfinite(finite_min), finite_min, 0.0)


def free_energy_profile(
    samples: Any,
    cv: Any,
    bins: Any = 50,
    *,
    range: Any = None,
    kT: float = 1.0,
    n_bootstrap: int = 200,
    seed: int = 0,
    confidence: float = 0.95,
    block_length: int | None = None,
) -> FreeEnergyProfile:
    """F(s) = -kT log p(s) along one or two collective variables, with bootstrap bands.

    p(s) is the weighted histogram density (bin probability over bin width or area),
    so non-uniform bins are handled; F is shifted to a minimum of 0.

    Parameters
    ----------
    samples
        :class:`~physsample.Samples` (weighted, or MD output with autocorrelation-aware
        bootstrap).
    cv
        Callable mapping positions (N, dim) to values (N,) or (N, 2), or the values.
    bins
        Number of bins or edges, as for ``numpy.histogramdd``; per dimension as a
        list for 2-D.
    range
        (low, high), or one pair per dimension; default the data range.
    kT
        Energy unit of F.
    n_bootstrap, seed, confidence, block_length
        Bootstrap settings (the block length follows from the CV's autocorrelation
        time for unweighted samples).

    Returns
    -------
    FreeEnergyProfile
    """
    _check_kt(kT)
    values = _cv_values(samples, cv)
    w = _normalised_weights(samples)
    edges = _edges(values, bins, range)
    shape = tuple(len(e) - 1 for e in edges)
    n_bins = int(np.prod(shape))
    volume = np.prod(np.meshgrid(*[np.diff(e) for e in edges], indexing="ij"), axis=0).ravel()
    flat = _bin_index(values, edges)
    inside = flat >= 0
    p = np.bincount(flat[inside], weights=w[inside], minlength=n_bins) / w.sum()
    counts = np.bincount(flat[inside], minlength=n_bins)
    plan = plan_bootstrap(samples, list(values.T), block_length=block_length)
    reps = []
    for idx in plan.indices(n_bootstrap, np.random.default_rng(seed)):
        k = idx.shape[0]
        fb, wb = flat[idx], w[idx]
        keep = fb >= 0
        ids = (fb + n_bins * np.arange(k)[:, None])[keep]
        hist = np.bincount(ids, weights=wb[keep], minlength=k * n_bins).reshape(k, n_bins)
        reps.append(_profile_from_probability(hist / wb.sum(axis=1, keepdims=True), volume, kT))
    low, high = order_interval(np.concatenate(reps), check_confidence(confidence))
    return FreeEnergyProfile(
        edges=edges,
        f=_profile_from_probability(p, volume, kT).reshape(shape),
        low=low.reshape(shape),
        high=high.reshape(shape),
        probability=p.reshape(shape),
        counts=counts.reshape(shape),
        kT=float(kT),
        confidence=float(confidence),
        bootstrap=plan.describe(),
    )


class MBARResult(NamedTuple):
    """Free energies of K thermodynamic states from MBAR, in kT.

    Attributes
    ----------
    delta_f : np.ndarray
        (K, K): ``delta_f[i, j] = f_j - f_i``.
    d_delta_f : np.ndarray
        (K, K) standard errors of ``delta_f`` (asymptotic, for uncorrelated samples).
    f_k : np.ndarray
        (K,) free energies with f_0 = 0.
    """

    delta_f: np.ndarray
    d_delta_f: np.ndarray
    f_k: np.ndarray


def mbar_free_energies(u_kn: Any, N_k: Any, **mbar_options: Any) -> MBARResult:  # noqa: N803
    """Free-energy differences between K states by MBAR (``pymbar.MBAR``).

    Parameters
    ----------
    u_kn
        (K, N) reduced potentials: ``u_kn[k, n]`` is the energy in kT of sample n
        evaluated in state k, with the N samples of all states concatenated.
    N_k
        (K,) number of samples drawn from each state, in the order of the columns.
    **mbar_options
        Passed to ``pymbar.MBAR`` (e.g. ``solver_protocol``).

    Returns
    -------
    MBARResult
        Differences and their standard errors in kT.

    Notes
    -----
    pymbar's uncertainties assume independent samples: subsample correlated MD output
    first (e.g. every ``ceil(tau)``-th sample, or
    ``pymbar.timeseries.subsample_correlated_data``).
    """
    import pymbar

    u = to_numpy(u_kn, "u_kn", ndim=2)
    n_k = np.asarray(to_numpy(N_k, "N_k", ndim=1), dtype=np.int64)
    if u.shape[0] != n_k.size or n_k.sum() != u.shape[1] or np.any(n_k < 0):
        raise ShapeError(f"mbar_free_energies: u_kn {u.shape} does not match N_k {n_k.tolist()}")
    if not np.all(np.isfinite(u)):
        raise ShapeError("mbar_free_energies: u_kn must be finite")
    mbar = pymbar.MBAR(u, n_k, **mbar_options)
    result = mbar.compute_free_energy_differences()
    delta = np.asarray(result["Delta_f"])
    return MBARResult(delta, np.asarray(result["dDelta_f"]), np.asarray(delta[0]))


def _check_kt(kT: float) -> None:  # noqa: N803
    if not float(kT) > 0:
        raise ConfigError(f"kT must be positive, got {kT}")
