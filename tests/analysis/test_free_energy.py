"""Free energies against exact answers, with intervals checked for coverage over seeds.

Coverage tests use 40 seeds and require at least 34 intervals (0.85) to contain the
truth. For a correct 95% interval the number covered is Binomial(40, 0.95):
P(X <= 33) = 0.003 (0.02 even for a slightly optimistic 93% bootstrap interval), while
an interval with true coverage 0.6 would pass with probability 0.0006.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import integrate
from scipy.special import logsumexp
from scipy.stats import norm

from physsample import Samples
from physsample.analysis import (
    elbo,
    eubo,
    free_energy,
    free_energy_difference,
    free_energy_profile,
    log_z,
    mbar_free_energies,
    state_probabilities,
)
from physsample.analysis.bootstrap import block_length_for, chain_segments, plan_bootstrap
from physsample.errors import ShapeError
from physsample.systems.manywell import Manywell

N_SEEDS, MIN_COVERED = 40, 34

# -- a double well with exact state populations --------------------------------------------
MANYWELL = Manywell(2)  # x1: u(x) = x^4 - 6 x^2 - 0.5 x (wells at -1.71 and 1.75), x2: N(0, 1)
CENTRES, SCALE = np.array([-1.7, 1.75]), 0.45  # proposal: equal mixture in x1, N(0, 1.2^2) in x2


def _well_mass(a: float, b: float) -> float:
    """Integral of exp(-(u - min u)) over [a, b] by adaptive quadrature."""
    u_min = MANYWELL.well.u_min
    f = lambda s: math.exp(-(float(MANYWELL.well(torch.tensor(s))) - u_min))  # noqa: E731
    return integrate.quad(f, a, b, limit=200)[0]


# u - min u > 100 beyond |x| = 4: the tails are negligible
P_LEFT = _well_mass(-4.0, 0.0) / (_well_mass(-4.0, 0.0) + _well_mass(0.0, 4.0))
DF_EXACT = -math.log(P_LEFT / (1.0 - P_LEFT))  # Delta F = F_A - F_B, A: x1 < 0, B: x1 >= 0


def _log_proposal(x: np.ndarray) -> np.ndarray:
    comp = norm.logpdf(x[:, :1], CENTRES, SCALE) + math.log(0.5)
    return logsumexp(comp, axis=1) + norm.logpdf(x[:, 1], 0.0, 1.2)


def _proposal_samples(n: int, seed: int) -> Samples:
    rng = np.random.default_rng(seed)
    x1 = CENTRES[rng.integers(0, 2, n)] + SCALE * rng.normal(size=n)
    x = np.stack([x1, 1.2 * rng.normal(size=n)], axis=1)
    log_w = -MANYWELL.energy(torch.from_numpy(x)).numpy() - _log_proposal(x)
    return Samples(torch.from_numpy(x), log_weights=torch.from_numpy(log_w))


def _left(x):
    return x[:, 0] < 0


def _right(x):
    return x[:, 0] >= 0


def test_weighted_delta_f_covers_exact_value():
    covered, width_ratio = 0, []
    for seed in range(N_SEEDS):
        samples = _proposal_samples(2000, seed)
        est, (low, high) = free_energy_difference(samples, _left, _right, 300, seed=seed)
        assert low <= est <= high
        covered += low <= DF_EXACT <= high
        # delta method: SE(p) from self-normalised weights, SE(dF) = SE(p) / (p (1 - p))
        w = samples.weights().numpy()
        a = _left(samples.x).numpy()
        p = float(np.sum(w * a))
        se = math.sqrt(np.sum(w**2 * (a - p) ** 2)) / (p * (1 - p))
        width_ratio.append((high - low) / (2 * 1.96 * se))
    assert covered >= MIN_COVERED, covered
    assert 0.8 < np.mean(width_ratio) < 1.25, np.mean(width_ratio)


def test_unweighted_exact_samples_of_symmetric_wells():
    """mw5 wells are symmetric: Delta F between x0 < 0 and x0 > 0 is exactly 0."""
    from physsample.systems import get

    mw5 = get("mw5")
    covered = 0
    for seed in range(N_SEEDS):
        x = mw5.sample_exact(1000, torch.Generator().manual_seed(seed))
        est, (low, high) = free_energy_difference(Samples(x), _left, _right, 300, seed=seed, kT=2.5)
        covered += low <= 0.0 <= high
    assert covered >= MIN_COVERED, covered


def _ar1(n: int, phi: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    noise = rng.normal(size=n) * math.sqrt(1 - phi**2)
    x = np.empty(n)
    x[0] = rng.normal()
    for t in range(1, n):
        x[t] = phi * x[t - 1] + noise[t]
    return x


def test_block_bootstrap_on_autocorrelated_indicator():
    """An AR(1) series with N(0, 1) marginal: P(x > 0.5) = 1 - Phi(0.5) exactly. The block
    bootstrap's intervals cover the truth at the nominal rate; i.i.d. ones are too narrow."""
    threshold = 0.5
    truth = -math.log(norm.sf(threshold) / norm.cdf(threshold))
    covered = {"block": 0, "naive": 0}
    ratios = []
    for seed in range(N_SEEDS):
        samples = Samples(torch.from_numpy(_ar1(8000, 0.9, seed))[:, None])
        above = samples.x[:, 0].numpy() > threshold
        widths = {}
        for kind, length in (("block", None), ("naive", 1)):
            est, (low, high) = free_energy_difference(
                samples, above, ~above, 250, seed=seed, block_length=length
            )
            covered[kind] += low <= truth <= high
            widths[kind] = high - low
        ratios.append(widths["block"] / widths["naive"])
    assert covered["block"] >= MIN_COVERED, covered
    assert covered["naive"] <= 30, covered  # expected ~0.55 coverage: sqrt(tau) too narrow
    assert np.median(ratios) > 2.0


def test_harmonic_oscillator_free_energy():
    """E = k x^2 / 2, k = (1, 4): log Z = sum 0.5 log(2 pi / k); proposal N(0, 1.5^2 I)."""
    k = np.array([1.0, 4.0])
    exact = float(np.sum(0.5 * np.log(2 * np.pi / k)))
    covered = 0
    for seed in range(N_SEEDS):
        rng = np.random.default_rng(seed)
        x = 1.5 * rng.normal(size=(2000, 2))
        log_w = -0.5 * (k * x * x).sum(1) - norm.logpdf(x, 0.0, 1.5).sum(1)
        f, (low, high) = free_energy(log_w, n_bootstrap=300, seed=seed)
        assert low <= f <= high
        covered += low <= -exact <= high
        lz = log_z(torch.from_numpy(log_w), n_bootstrap=50)
        assert lz.value == pytest.approx(-f)
        assert elbo(log_w) < exact
        target = rng.normal(size=(2000, 2)) / np.sqrt(k)
        assert eubo(-0.5 * (k * target**2).sum(1) - norm.logpdf(target, 0.0, 1.5).sum(1)) > exact
    assert covered >= MIN_COVERED, covered
    value, (low, high) = free_energy(log_w, kT=2.0, n_bootstrap=100)
    assert value == pytest.approx(2.0 * f) and high - low > 0


def _exact_profile(edges: np.ndarray) -> np.ndarray:
    mass = np.array([_well_mass(a, b) for a, b in zip(edges[:-1], edges[1:], strict=True)])
    f = -np.log(mass / np.diff(edges))
    return f - f.min()


@pytest.mark.parametrize("weighted", [False, True])
def test_profile_along_double_well(weighted):
    if weighted:
        samples = _proposal_samples(20_000, seed=1)
    else:
        samples = Samples(MANYWELL.sample_exact(20_000, torch.Generator().manual_seed(1)))
    prof = free_energy_profile(samples, lambda x: x[:, 0], bins=40, range=(-2.4, 2.4), seed=2)
    exact = _exact_profile(prof.edges[0])
    assert prof.f.shape == (40,) and np.nanmin(prof.f) == 0.0
    assert np.argmin(prof.f) == np.argmin(exact)
    populated = prof.counts >= 100
    inside = (prof.low <= exact) & (exact <= prof.high)
    assert inside[populated].mean() >= 0.8, inside[populated].mean()
    assert np.all(prof.low[populated] <= prof.f[populated])
    assert np.all(prof.f[populated] <= prof.high[populated])
    assert np.isinf(prof.f[prof.probability == 0]).all()


def test_profile_2d_and_weights_that_vanish():
    x = torch.from_numpy(np.random.default_rng(3).normal(size=(5000, 2)))
    prof = free_energy_profile(Samples(x), lambda x: x, bins=[20, 10], n_bootstrap=50)
    assert prof.f.shape == (20, 10) and prof.ndim == 2
    assert len(prof.centers) == 2 and prof.centers[1].shape == (10,)
    # zero weight on x0 > 0 leaves those bins empty
    lw = torch.where(x[:, 0] > 0, -torch.inf, 0.0).double()
    half = free_energy_profile(Samples(x, lw), x[:, 0].numpy(), bins=10, range=(-3, 3))
    assert np.isinf(half.f[5:]).all() and np.isfinite(half.f[1:5]).all()


def test_mbar_on_harmonic_oscillators():
    """States k = 1, 2, 4 (1-D): f_k = -log sqrt(2 pi / k), Delta f_0j = 0.5 log(k_j / k_0)."""
    ks = np.array([1.0, 2.0, 4.0])
    rng = np.random.default_rng(4)
    x = np.concatenate([rng.normal(size=1000) / np.sqrt(k) for k in ks])
    u_kn = 0.5 * ks[:, None] * x[None, :] ** 2
    result = mbar_free_energies(u_kn, [1000, 1000, 1000])
    exact = 0.5 * np.log(ks / ks[0])
    assert np.all(np.abs(result.delta_f[0] - exact) < 5 * result.d_delta_f[0] + 1e-12)
    assert result.d_delta_f[0, 1] > 0 and result.f_k[0] == 0.0
    with pytest.raises(ShapeError):
        mbar_free_energies(u_kn, [1000, 1000])


def test_state_probabilities_and_checks():
    x = torch.linspace(-1, 1, 101)[:, None].double()
    probs = state_probabilities(Samples(x), [_left, _right])
    assert probs == pytest.approx([50 / 101, 51 / 101])
    with pytest.raises(ShapeError):
        free_energy_difference(Samples(x), lambda x: x[:, 0], _right)  # not boolean
    with pytest.warns(UserWarning):
        value, _ = free_energy_difference(Samples(x), lambda x: x[:, 0] > 5, _right, 20)
    assert value == np.inf


def test_chain_structure_from_metadata():
    n = 120
    md = {"sampler": "run_md", "replica": [0] * 40 + [1] * 40 + [2] * 40}
    assert [len(s) for s in chain_segments(md, n)] == [40, 40, 40]
    assert [s[0] for s in chain_segments({"n_chains": 4, "n_per_chain": 30}, n)] == [0, 30, 60, 90]
    repex = {"sampler": "run_replica_exchange (openmmtools)", "replica": [0, 1] * 60}
    assert len(chain_segments(repex, n)) == 1
    assert len(chain_segments({"replica": [0] * 10}, n)) == 1  # does not match: one chain
    assert block_length_for(1.0) == 1 and block_length_for(float("nan")) == 1
    assert block_length_for(20.0) == math.ceil((400 - 1) / (2 * 0.05 * 20))


def _chains_samples(series: np.ndarray, n_chains: int) -> Samples:
    md = {"n_chains": n_chains, "n_per_chain": len(series) // n_chains}
    return Samples(torch.from_numpy(series)[:, None], metadata=md)


def test_correlated_or_stuck_chains_resample_whole_chains():
    # 40 mixing but strongly correlated chains of 25: too short for blocks
    series = np.concatenate([_ar1(25, 0.97, seed) for seed in range(40)])
    plan = plan_bootstrap(_chains_samples(series, 40), [series > 0])
    assert plan.kind == "chains" and plan.block_length * 10 > 25
    idx = next(plan.indices(3, np.random.default_rng(0)))
    assert idx.shape == (3, 1000) and np.all(np.diff(idx.reshape(3, 40, 25), axis=2) == 1)
    # 40 long chains, each stuck in one state: they disagree (R-hat = inf)
    stuck = np.repeat(np.random.default_rng(5).normal(size=40), 200)
    assert plan_bootstrap(_chains_samples(stuck, 40), [stuck > 0]).kind == "chains"
    # with 4 chains there is no valid choice: a warning, and blocks within chains
    with pytest.warns(UserWarning, match="disagree"):
        few = plan_bootstrap(_chains_samples(stuck[:800], 4), [stuck[:800] > 0])
    assert few.kind == "block"
    short = np.concatenate([_ar1(25, 0.97, seed) for seed in range(4)])
    with pytest.warns(UserWarning) as record:  # (these chains also disagree)
        plan_bootstrap(_chains_samples(short, 4), [short > 0])
    assert any("too short" in str(w.message) for w in record)
    weighted = plan_bootstrap(Samples(np.zeros((10, 1)), log_weights=np.zeros(10)), [])
    assert weighted.kind == "iid"


def test_stuck_md_replicas_give_honest_intervals():
    """40 replicas, each stuck in the well it started in: the interval reflects the
    replica counts per well (binomial), not the many correlated samples per replica."""
    rng = np.random.default_rng(6)
    wells = rng.random(40) < 0.5
    series = np.repeat(np.where(wells, 1.0, -1.0), 100) + 0.1 * rng.normal(size=4000)
    md = {"sampler": "run_md", "replica": np.repeat(np.arange(40), 100).tolist()}
    samples = Samples(torch.from_numpy(series)[:, None], metadata=md)
    est, (low, high) = free_energy_difference(samples, _left, _right, 400)
    p = wells.mean()
    se = math.sqrt(p * (1 - p) / 40) / (p * (1 - p))  # delta method over 40 replicas
    assert 0.7 < (high - low) / (2 * 1.96 * se) < 1.4
