"""Tests of the autocorrelation, ESS and R-hat estimators against AR(1) processes."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.signal import lfilter

from physsample.errors import ShapeError
from physsample.mcmc import effective_sample_size, integrated_autocorr_time, split_rhat
from physsample.mcmc.diagnostics import acceptance_summary, autocorrelation


def ar1(phi: float, shape: tuple[int, int], seed: int) -> np.ndarray:
    """Stationary AR(1) x_t = phi x_{t-1} + e_t, e ~ N(0, 1); tau = (1 + phi) / (1 - phi)."""
    rng = np.random.default_rng(seed)
    noise = rng.normal(size=shape)
    start = rng.normal(size=(shape[0], 1)) / math.sqrt(1.0 - phi**2)
    return lfilter([1.0], [1.0, -phi], noise, axis=1, zi=phi * start)[0]


def sokal_sd(tau: float, n: int, c: float = 5.0) -> float:
    """Standard deviation of the windowed estimator, tau sqrt(2 (2M + 1) / n), M = c tau."""
    return tau * math.sqrt(2.0 * (2.0 * c * tau + 1.0) / n)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ar1_single_chain(seed):
    phi, n = 0.9, 100_000
    tau = (1 + phi) / (1 - phi)
    estimate = integrated_autocorr_time(ar1(phi, (1, n), seed)[0])
    assert abs(estimate - tau) < 4 * sokal_sd(tau, n), (estimate, tau)


def test_ar1_many_chains_average_autocorrelation():
    phi, shape = 0.5, (8, 20_000)
    tau = (1 + phi) / (1 - phi)
    series = ar1(phi, shape, seed=3)
    estimate = integrated_autocorr_time(series)
    assert abs(estimate - tau) < 4 * sokal_sd(tau, series.size)
    ess = effective_sample_size(series)
    assert ess == pytest.approx(series.size / estimate)
    rho = autocorrelation(series)
    assert rho[0] == 1.0
    # rho(k) = phi^k, each lag within a few standard errors ~ sqrt(tau / n)
    np.testing.assert_allclose(
        rho[1:5], phi ** np.arange(1, 5), atol=5 * math.sqrt(tau / series.size)
    )


def test_white_noise_and_torch_input():
    x = torch.from_numpy(np.random.default_rng(4).normal(size=(4, 25_000)))
    assert abs(integrated_autocorr_time(x) - 1.0) < 4 * sokal_sd(1.0, x.numel())
    assert math.isnan(integrated_autocorr_time(np.ones(100)))


def test_short_series_returns_largest_window():
    # far too short for tau = 199: no window satisfies M >= c tau(M); the estimate is
    # a lower bound, not an error
    estimate = integrated_autocorr_time(ar1(0.99, (1, 200), seed=5)[0])
    assert np.isfinite(estimate) and estimate < 199


@settings(max_examples=25, deadline=None)
@given(scale=st.floats(1e-3, 1e3), shift=st.floats(-1e3, 1e3), seed=st.integers(0, 100))
def test_tau_is_affine_invariant(scale, shift, seed):
    x = ar1(0.7, (2, 2_000), seed)
    assert integrated_autocorr_time(scale * x + shift) == pytest.approx(
        integrated_autocorr_time(x), rel=1e-6
    )


def test_split_rhat_iid_is_one():
    # R-hat^2 - 1 ~ (chi2_7 / 7 - 1) / n for 8 split chains of n = 500 iid draws
    chains = np.random.default_rng(6).normal(size=(4, 1000))
    assert abs(split_rhat(chains) - 1.0) < 0.01


def test_split_rhat_detects_different_means_and_trends():
    rng = np.random.default_rng(7)
    chains = rng.normal(size=(4, 1000)) + np.array([[0.0], [0.0], [0.0], [1.0]])
    assert split_rhat(chains) > 1.1
    trend = rng.normal(size=1000) + np.linspace(0, 3, 1000)  # one non-stationary chain
    assert split_rhat(trend) > 1.1


def test_acceptance_summary_and_shape_errors():
    summary = acceptance_summary([[1.0, 0.0], [0.5, 0.5]])
    assert summary == {"mean": 0.5, "per_chain": [0.5, 0.5], "min": 0.5, "max": 0.5}
    with pytest.raises(ShapeError):
        integrated_autocorr_time(np.zeros((2, 3, 4)))
    with pytest.raises(ShapeError):
        split_rhat(np.zeros((2, 3)))
