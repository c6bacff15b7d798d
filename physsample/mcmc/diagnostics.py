"""Convergence diagnostics for MCMC output: autocorrelation time, ESS, split R-hat.

Plain numpy; every function takes a series of shape (T,) or (chains, T) (torch tensors
are converted).

The integrated autocorrelation time of a stationary series f_t is

    tau = 1 + 2 sum_{k>=1} rho(k),    rho(k) = gamma(k) / gamma(0),

so that the variance of the mean of T correlated draws is var(f) tau / T and the
effective sample size is T / tau. It is estimated with Sokal's automatic window:
tau_hat(M) = 1 + 2 sum_{k=1}^{M} rho_hat(k), with M the smallest lag such that
M >= c tau_hat(M). The estimator's variance is about 2 (2M + 1) / T tau^2
(Madras & Sokal 1988).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from physsample.errors import ShapeError

__all__ = [
    "autocorrelation",
    "integrated_autocorr_time",
    "effective_sample_size",
    "split_rhat",
    "acceptance_summary",
]


def _as_chains(series: Any, name: str, min_len: int = 2) -> np.ndarray:
    """float64 array (chains, T) from (T,) or (chains, T), with T >= min_len."""
    if hasattr(series, "detach"):
        series = series.detach().cpu().numpy()
    arr = np.asarray(series, dtype=np.float64)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.shape[1] < min_len:
        raise ShapeError(
            f"{name}: need a series of shape (T,) or (chains, T) with T >= {min_len}, "
            f"got {np.shape(series)}"
        )
    return arr


def autocorrelation(series: Any) -> np.ndarray:
    """Normalised autocorrelation rho(k), k = 0..T-1, averaged over chains.

    Each chain is centred on its own mean; the biased autocovariance
    gamma_c(k) = (1/T) sum_{t=0}^{T-1-k} (f_t - mean_c)(f_{t+k} - mean_c) is computed by
    FFT (zero-padded, so not circular), averaged over chains and divided by its lag-0
    value: rho(k) = mean_c gamma_c(k) / mean_c gamma_c(0).

    Parameters
    ----------
    series
        (T,) or (chains, T).

    Returns
    -------
    np.ndarray
        (T,), rho[0] = 1; all NaN if the series is constant within every chain.
    """
    arr = _as_chains(series, "autocorrelation")
    t = arr.shape[1]
    centred = arr - arr.mean(axis=1, keepdims=True)
    n_fft = 1 << (2 * t - 1).bit_length()
    spectrum = np.fft.rfft(centred, n=n_fft, axis=1)
    acov = np.fft.irfft(spectrum * np.conj(spectrum), n=n_fft, axis=1)[:, :t] / t
    mean_acov = acov.mean(axis=0)
    if mean_acov[0] <= 0:
        return np.full(t, np.nan)
    return mean_acov / mean_acov[0]


def integrated_autocorr_time(series: Any, c: float = 5.0) -> float:
    """Integrated autocorrelation time with Sokal's automatic window.

    tau_hat(M) = 1 + 2 sum_{k=1}^{M} rho_hat(k), where rho_hat is :func:`autocorrelation`
    (averaged over chains) and M is the smallest lag with M >= c tau_hat(M). If no such
    lag exists within the series (it is too short for its correlation time), the
    estimate at the largest lag is returned; treat it as a lower bound.

    Parameters
    ----------
    series
        (T,) or (chains, T); chains must be equally long.
    c
        Window constant; 5 is customary for roughly exponential decay.

    Returns
    -------
    float
        tau in units of the series' steps (>= about 1 for positively correlated
        chains; below 1 for anticorrelated ones). NaN for a constant series.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> round(integrated_autocorr_time(rng.normal(size=100_000)), 1)
    1.0
    """
    rho = autocorrelation(series)
    if np.isnan(rho[0]):
        return float("nan")
    taus = 2.0 * np.cumsum(rho) - 1.0  # taus[M] = 1 + 2 sum_{k=1}^{M} rho(k)
    ok = np.arange(len(taus)) >= c * taus
    window = int(np.argmax(ok)) if ok.any() else len(taus) - 1
    return float(taus[window])


def effective_sample_size(series: Any, c: float = 5.0) -> float:
    """Effective sample size chains * T / tau of the mean of ``series``.

    Parameters
    ----------
    series
        (T,) or (chains, T).
    c
        Window constant of :func:`integrated_autocorr_time`.

    Returns
    -------
    float
        NaN where tau is NaN or not positive (constant or very short series).
    """
    arr = _as_chains(series, "effective_sample_size")
    tau = integrated_autocorr_time(arr, c=c)
    return float(arr.size / tau) if tau > 0 else float("nan")


def split_rhat(chains: Any) -> float:
    """Gelman-Rubin potential scale reduction R-hat on split chains.

    Each of the m chains is cut into two halves of n = floor(T/2) draws (the middle
    draw of an odd T is dropped), giving 2m chains. With W the mean of the within-chain
    variances (ddof 1) and B/n the variance (ddof 1) of the chain means,

        var_plus = (n - 1)/n W + B/n,    R-hat = sqrt(var_plus / W).

    R-hat is close to 1 when the chains agree and exceeds 1 when they sample different
    regions or have not reached stationarity; 1.01 (strict) to 1.1 (lenient) are
    customary thresholds.

    Parameters
    ----------
    chains
        (chains, T) with T >= 4; a single chain (T,) is accepted.
    """
    arr = _as_chains(chains, "split_rhat")
    n = arr.shape[1] // 2
    if n < 2:
        raise ShapeError(f"split_rhat: need at least 4 draws per chain, got {arr.shape[1]}")
    halves = np.concatenate([arr[:, :n], arr[:, -n:]], axis=0)
    within = halves.var(axis=1, ddof=1).mean()
    between_over_n = halves.mean(axis=1).var(ddof=1)
    if within == 0:
        return float("nan") if between_over_n == 0 else float("inf")
    return float(np.sqrt(((n - 1) / n * within + between_over_n) / within))


def acceptance_summary(accept_prob: Any) -> dict[str, Any]:
    """Mean, per-chain, smallest and largest acceptance rate.

    Parameters
    ----------
    accept_prob
        Per-step Metropolis acceptance probabilities (or 0/1 outcomes), (T,) or
        (chains, T).

    Returns
    -------
    dict
        ``{"mean": float, "per_chain": list[float], "min": float, "max": float}``.
    """
    arr = _as_chains(accept_prob, "acceptance_summary", min_len=1)
    per_chain = arr.mean(axis=1)
    return {
        "mean": float(per_chain.mean()),
        "per_chain": per_chain.tolist(),
        "min": float(per_chain.min()),
        "max": float(per_chain.max()),
    }
