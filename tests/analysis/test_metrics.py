"""Benchmark metrics against closed forms and constructed cases with known answers."""

from __future__ import annotations

import math

import numpy as np
import ot
import pytest
import torch

from physsample import Samples
from physsample.analysis import (
    distance_tv,
    emc,
    energy_w2,
    ess,
    geometric_w2,
    mmd,
    mode_histogram,
    sinkhorn,
)
from physsample.analysis.wasserstein import exact_w2
from physsample.errors import ConfigError, ShapeError


# -- energy W2 ---------------------------------------------------------------------------
@pytest.mark.parametrize(("mu", "s1", "s2"), [(1.0, 1.0, 1.0), (0.5, 1.0, 2.0), (3.0, 2.0, 0.5)])
def test_energy_w2_of_gaussians(mu, s1, s2):
    """W2(N(0, s1^2), N(mu, s2^2)) = sqrt(mu^2 + (s1 - s2)^2).

    Tolerance: the empirical W2^2 of sorted samples is the exact value plus a mean-
    difference term of standard deviation 2 W2 sqrt((s1^2 + s2^2) / n) (so W2 itself
    has sd sqrt((s1^2 + s2^2) / n)) plus a positive bias of order (s1^2 + s2^2) log(n) / n
    from matching two samples of the same law; we allow 5 sd plus that bias.
    """
    n = 200_000
    rng = np.random.default_rng(0)
    x, y = rng.normal(0.0, s1, n), rng.normal(mu, s2, n)
    exact = math.hypot(mu, s1 - s2)
    sd = math.sqrt((s1**2 + s2**2) / n)
    bias = (s1**2 + s2**2) * math.log(n) / n / exact
    assert abs(energy_w2(torch.from_numpy(x), y) - exact) < 5 * sd + bias


def test_energy_w2_error_shrinks_with_n():
    rng = np.random.default_rng(1)
    errors = []
    for n in (1_000, 16_000, 256_000):
        errors.append(abs(energy_w2(rng.normal(size=n), rng.normal(2.0, 1.0, size=n)) - 2.0))
    assert errors[2] < errors[0]
    assert errors[2] < 5 * math.sqrt(2 / 256_000)


def test_energy_w2_rejects_non_finite():
    with pytest.raises(ShapeError):
        energy_w2(np.array([0.0, np.inf]), np.zeros(2))


def test_exact_w2_of_multivariate_gaussians_converges():
    """Equal covariances: W2 = |mu1 - mu2|; the empirical value approaches it as N grows
    (its upward bias, the W2 between two samples of one law, shrinks like N^(-1/d))."""
    rng = np.random.default_rng(2)
    mu = np.array([1.5, -1.0])
    errors = []
    for n in (100, 400, 1600):
        x, y = rng.normal(size=(n, 2)), rng.normal(size=(n, 2)) + mu
        errors.append(exact_w2(ot.dist(x, y)) - np.linalg.norm(mu))
    assert errors[-1] < errors[0]
    assert -0.05 < errors[-1] < 0.15


# -- geometric W2 ------------------------------------------------------------------------
def _dw4_reference():
    return np.load("systems/dw4/reference_community.npy")


def _rotated_permuted_copy(x, n, d, seed):
    rng = np.random.default_rng(seed)
    out = np.empty_like(x)
    for k, row in enumerate(x.reshape(len(x), n, d)):
        theta = rng.uniform(0, 2 * np.pi)
        q = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
        if k % 2:
            q = q @ np.diag([-1.0, 1.0])
        out[k] = ((row @ q)[rng.permutation(n)] + rng.normal(size=d)).ravel()
    return out


def test_geometric_w2_copy_is_zero_and_other_set_is_not():
    data = _dw4_reference()
    x = data[:300].astype(np.float64)
    copy = _rotated_permuted_copy(x, 4, 2, seed=0)
    assert geometric_w2(x, copy, n_particles=4, spatial_dim=2) < 1e-6
    other = geometric_w2(x, data[5000:5300], n_particles=4, spatial_dim=2)
    assert other > 0.1
    # without the alignment the same sets are far apart
    assert exact_w2(ot.dist(x - x.mean(1, keepdims=True), copy)) > 10 * other


def test_geometric_w2_subsamples_and_rejects_weighted():
    data = _dw4_reference()
    small = geometric_w2(data[:3000], data[5000:8000], 4, 2, max_samples=200, seed=3)
    assert 0.1 < small < 2.0
    with pytest.raises(ConfigError):
        geometric_w2(Samples(data[:10], log_weights=np.zeros(10)), data[:10], 4, 2)


# -- distance TV -------------------------------------------------------------------------
def _pairs_at(distances):
    """Two-particle 2-D configurations with the given interparticle distances."""
    return np.stack([np.zeros_like(distances)] * 2 + [distances, np.zeros_like(distances)], 1)


def test_distance_tv_known_cases():
    ref = _pairs_at(np.linspace(1.0, 2.0, 20_001))
    gen = _pairs_at(np.linspace(1.5, 2.5, 20_001))
    assert distance_tv(ref, ref, 2, 2) == 0.0
    # generated mass inside [1, 2] is uniform on [1.5, 2]: TV = 1/2 after renormalising,
    # and 1/4 when the half outside the reference range counts (bin effects ~ 1/200)
    assert distance_tv(gen, ref, 2, 2) == pytest.approx(0.5, abs=0.01)
    assert distance_tv(gen, ref, 2, 2, normalize="total") == pytest.approx(0.25, abs=0.01)
    assert distance_tv(_pairs_at(np.full(10, 5.0)), ref, 2, 2) == 1.0


def test_distance_tv_of_reference_data():
    data = _dw4_reference()
    assert distance_tv(data[:2000], data[:2000], 4, 2) == 0.0
    same = distance_tv(data[:2000], data[5000:7000], 4, 2)
    shifted = distance_tv(1.1 * data[:2000], data[5000:7000], 4, 2)  # distances stretched
    assert shifted > 0.2 > same


# -- Sinkhorn ----------------------------------------------------------------------------
@pytest.mark.filterwarnings("error::UserWarning")  # POT warns when Sinkhorn does not converge
def test_sinkhorn_between_limits():
    """OT <= <P_eps, C> <= OT + eps log(n m); large eps gives the independent coupling."""
    rng = np.random.default_rng(4)
    x = rng.normal(size=(60, 2))
    y = x + np.array([0.5, 0.0])  # exact OT: the translation, cost 0.25
    exact = ot.emd2(ot.unif(60), ot.unif(60), ot.dist(x, y))
    assert exact == pytest.approx(0.25, rel=1e-9)
    values = [sinkhorn(x, y, eps) for eps in (0.3, 1.0)]
    for eps, value in zip((0.3, 1.0), values, strict=True):
        assert exact - 1e-6 <= value <= exact + eps * math.log(60 * 60)
    assert values[0] < values[1]
    mean_cost = ot.dist(x, y).mean()
    assert sinkhorn(x, y, 1e5) == pytest.approx(mean_cost, rel=1e-3)
    with pytest.raises(ConfigError):
        sinkhorn(x, y, 0.0)


# -- MMD ---------------------------------------------------------------------------------
def _mmd2_gaussians(shift, h, d):
    """MMD^2 between N(0, I) and N(shift, I) in d dimensions, RBF bandwidth h."""
    c = (h * h / (h * h + 2)) ** (d / 2)
    return 2 * c * (1 - math.exp(-(shift**2) / (2 * (h * h + 2))))


def test_mmd_closed_form():
    """Mean of 10 independent unbiased estimates within 4 standard errors of the truth."""
    h, d, n = 1.0, 2, 500
    rng = np.random.default_rng(5)
    for shift in (0.0, 1.0):
        est = [
            mmd(rng.normal(size=(n, d)), rng.normal(size=(n, d)) + [shift, 0.0], h, squared=True)
            for _ in range(10)
        ]
        se = np.std(est, ddof=1) / math.sqrt(len(est))
        assert abs(np.mean(est) - _mmd2_gaussians(shift, h, d)) < 4 * se + 1e-12


def test_mmd_median_heuristic():
    rng = np.random.default_rng(6)
    x = rng.normal(size=(400, 3))
    assert mmd(x, rng.normal(size=(400, 3))) < 0.1 < mmd(x, rng.normal(size=(400, 3)) + 1.0)


# -- ESS and EMC -------------------------------------------------------------------------
def test_ess_constructed():
    n, k = 1000, 250
    log_w = np.concatenate([np.zeros(k), np.full(n - k, -np.inf)])
    assert ess(log_w) == pytest.approx(k / n)
    assert ess(np.full(10, 3.7)) == pytest.approx(1.0)
    # one weight M times the others: (n - 1 + M)^2 / (n (n - 1 + M^2))
    m = 30.0
    log_w = np.log(np.r_[np.ones(n - 1), m])
    assert ess(torch.from_numpy(log_w)) == pytest.approx((n - 1 + m) ** 2 / (n * (n - 1 + m * m)))
    assert ess(Samples(np.zeros((5, 1)))) == 1.0


def test_emc_constructed():
    modes = np.array([[-5.0, -5.0], [-5.0, 5.0], [5.0, -5.0], [5.0, 5.0]])
    rng = np.random.default_rng(7)
    noise = rng.normal(scale=0.5, size=(400, 2))
    all_modes = np.repeat(modes, 100, axis=0) + noise
    assert emc(all_modes, modes) == pytest.approx(1.0)
    assert emc(modes[[0]] + noise, modes) == 0.0
    two = np.repeat(modes[:2], 200, axis=0) + noise
    assert emc(two, modes) == pytest.approx(math.log(2) / math.log(4))
    weights = np.r_[np.ones(200), np.zeros(200)]  # reweighting can remove a mode
    assert emc(two, modes, weights=weights) == 0.0
    np.testing.assert_allclose(mode_histogram(all_modes, modes), 0.25)
    with pytest.raises(ConfigError):
        emc(all_modes, modes[:1])
