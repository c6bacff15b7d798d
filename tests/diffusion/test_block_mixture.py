"""Block-factorised Gaussian-mixture references: closed forms, prior, unbiased weights."""

from __future__ import annotations

import math

import pytest
import torch
from diffusion_testlib import F64, RandomControl, two_component_gmm
from scipy import stats

import physsample as ps
from physsample import diffusion as D
from physsample.errors import ConfigError, ShapeError


def _random_gmm(k: int, d: int, seed: int, covariance: str = "full") -> D.GMM:
    g = torch.Generator().manual_seed(seed)
    means = 3 * torch.randn(k, d, generator=g, dtype=F64)
    if covariance == "diag":
        cov = torch.rand(k, d, generator=g, dtype=F64) + 0.2
    else:
        a = torch.randn(k, d, d, generator=g, dtype=F64) * 0.6
        cov = a @ a.transpose(1, 2) + 0.1 * torch.eye(d, dtype=F64)
    weights = torch.rand(k, generator=g, dtype=F64) + 0.2
    return D.GMM.from_covariances(means, cov, weights)


def _well_gmm(extra: bool) -> D.GMM:
    """Two components on the wells of a Manywell pair (optionally a third, broad one)."""
    means = torch.tensor([[-1.7, 0.0], [1.75, 0.0]] + [[0.0, 0.0]] * extra, dtype=F64)
    var = torch.tensor([[0.05, 1.0], [0.05, 1.0]] + [[1.0, 1.0]] * extra, dtype=F64)
    weights = torch.tensor([0.16, 0.84] + [0.05] * extra, dtype=F64)
    return D.GMM.from_covariances(means, var, weights)


def _times(n: int, seed: int) -> torch.Tensor:
    return torch.rand(n, generator=torch.Generator().manual_seed(seed), dtype=F64)


@pytest.mark.parametrize("gmm", [_random_gmm(3, 2, 0), two_component_gmm(4)], ids=["2d", "4d"])
def test_one_block_equals_the_gaussian_mixture_reference(gmm):
    schedule = D.LinearVPSchedule(0.1, 10.0)
    block = D.BlockMixtureReference(schedule, [gmm])
    single = D.GaussianMixtureReference(schedule, gmm)
    x = torch.randn(40, gmm.dim, generator=torch.Generator().manual_seed(1), dtype=F64) * 3
    for t in (_times(40, 2), torch.zeros(40, dtype=F64), torch.ones(40, dtype=F64)):
        torch.testing.assert_close(block.log_prob(t, x), single.log_prob(t, x))
        torch.testing.assert_close(block.score(t, x), single.score(t, x))
        torch.testing.assert_close(block.base_control(t, x), single.base_control(t, x))
    torch.testing.assert_close(block.prior_log_prob(x), single.prior_log_prob(x))


@pytest.mark.parametrize("covariance", ["full", "diag"])
def test_score_is_the_gradient_of_the_log_density_and_blocks_add(covariance):
    gmms = [_random_gmm(k, 2, seed=k, covariance=covariance) for k in (1, 3, 2)]  # padded
    reference = D.BlockMixtureReference(D.LinearVPSchedule(0.1, 10.0), gmms)
    x = torch.randn(64, 6, generator=torch.Generator().manual_seed(3), dtype=F64) * 3
    t = _times(64, 4)
    xg = x.clone().requires_grad_(True)
    (expected,) = torch.autograd.grad(reference.log_prob(t, xg).sum(), xg)
    torch.testing.assert_close(reference.score(t, x), expected)
    a, c = reference.marginal(t)
    blocks = [g.log_prob(x[:, 2 * b : 2 * b + 2], a, c) for b, g in enumerate(gmms)]
    torch.testing.assert_close(reference.block_log_prob(t, x), torch.stack(blocks, dim=1))
    torch.testing.assert_close(reference.log_prob(t, x), sum(blocks))
    x32 = x.float()  # float32 inputs stay float32
    assert reference.score(t.float(), x32).dtype == torch.float32


def test_prior_samples_follow_the_product_of_noised_mixtures():
    gmms = [_random_gmm(3, 2, seed=5), _random_gmm(2, 2, seed=6)]
    schedule = D.LinearVPSchedule(0.1, 2.0)  # little noise: the mixtures are still visible
    reference = D.BlockMixtureReference(schedule, gmms)
    n = 20_000
    x = reference.sample_prior(n, torch.Generator().manual_seed(7), dtype=F64)
    a, c = (float(v) for v in reference.marginal(torch.tensor(0.0, dtype=F64)))
    mean, cov = torch.zeros(4, dtype=F64), torch.zeros(4, 4, dtype=F64)
    for b, g in enumerate(gmms):
        w, mu = g.weights, a * g.means
        cols = slice(2 * b, 2 * b + 2)
        mean[cols] = w @ mu
        moments = a * a * g.covariances() + mu[:, :, None] * mu[:, None]
        second = (w[:, None, None] * moments).sum(0)
        cov[cols, cols] = second + c * torch.eye(2, dtype=F64) - torch.outer(mean[cols], mean[cols])
        for j in range(2):  # KS test of each coordinate against its 1-D mixture CDF
            sd = (a * a * g.covariances()[:, j, j] + c).sqrt()

            def cdf(v, j=j, sd=sd, mu=mu, w=w):
                z = (torch.as_tensor(v)[:, None] - mu[:, j]) / sd
                return (w * torch.special.ndtr(z)).sum(1).numpy()

            assert stats.kstest(x[:, 2 * b + j].numpy(), cdf).pvalue > 1e-3
    assert bool(((x.mean(0) - mean).abs() < 5 * cov.diagonal().sqrt() / math.sqrt(n)).all())
    centred = x - x.mean(0)
    products = centred[:, :, None] * centred[:, None, :]
    se = products.std(dim=0) / math.sqrt(n)  # the blocks must also be independent
    assert bool(((products.mean(0) - cov).abs() < 5 * se).all())


def test_path_weights_are_unbiased_on_manywell4():
    """E[w] = Z for a random control on top of the block reference (4 standard errors)."""
    system = ps.systems.get("manywell4")
    reference = D.BlockMixtureReference(
        D.LinearVPSchedule(0.1, 5.0), [_well_gmm(False), _well_gmm(True)]
    )
    process = D.GenerativeProcess(reference, D.uniform_grid(6), "exponential")
    control = D.residual_control(reference, RandomControl(4, seed=8, scale=0.2))
    n = 20_000
    with torch.no_grad():
        out = D.simulate(
            process,
            control,
            system.log_prob,
            n,
            generator=torch.Generator().manual_seed(9),
            dtype=F64,
        )
    w = torch.exp(out.log_weights - system.log_z)
    mean, se = float(w.mean()), float(w.std()) / math.sqrt(n)
    assert se < 0.035, f"standard error {se:.3f} too large for the test to have power"
    assert abs(mean - 1.0) < 4 * se, f"mean w / Z = {mean:.4f} +- {se:.4f}"


def test_blocks_beat_one_mixture_on_manywell8_and_log_z_is_right():
    """Untrained LRDS from 2000 exact samples, 50 steps, 4000 draws (seeded).

    Seen: block reference (9 components in 4 blocks) ESS 0.52, dlog Z -0.021 (SE 0.015);
    one mixture by BIC (K <= 16, the LRDS default for 16 modes; K = 16) ESS 0.24.
    """
    system = ps.systems.get("manywell8")
    x = system.sample_exact(2000, torch.Generator().manual_seed(0))
    schedule = D.LinearVPSchedule(0.1, 5.0)
    block = D.BlockMixtureReference.fit(x, schedule, block_size=2, max_components=4)
    single = D.GaussianMixtureReference.fit(x, schedule, max_components=16)
    ess = {}
    for name, reference in (("block", block), ("single", single)):
        sampler = ps.methods.LRDS(system, reference=reference, n_steps=50, progress=False)
        est = sampler.log_z(4000, generator=torch.Generator().manual_seed(1))
        ess[name] = float(est.ess)
        if name == "block":
            se = math.sqrt((1.0 / ess[name] - 1.0) / 4000)
            assert abs(float(est.log_z) - system.log_z) < 4 * se
    assert ess["block"] > 0.4 and ess["single"] < 0.35, ess


def test_reweighting_recovers_the_well_occupancy_of_manywell4():
    """Start from 50/50 block weights (chains started in random wells); one IS-EM pass
    against the target gives the exact right-well share (0.844, from 200k exact draws)."""
    system = ps.systems.get("manywell4")
    exact = system.sample_exact(200_000, torch.Generator().manual_seed(0))
    share = float((exact[:, 0::2] > 0).double().mean())  # SE 0.0006
    gmms = []
    for _ in range(2):
        g = _well_gmm(False)
        gmms.append(D.GMM(g.means, g.log_eigvals.exp(), None, torch.tensor([0.5, 0.5])))
    reference = D.BlockMixtureReference(D.LinearVPSchedule(), gmms)
    new = reference.reweighted(
        system.log_prob, 4000, n_iter=2, generator=torch.Generator().manual_seed(1)
    )
    assert new.reweight_info["evaluations"] == 8000
    assert new.reweight_info["is_ess"][-1] > 0.5
    for g in new.gmms:  # SE of the weighted estimate about 0.008 at ESS > 0.5
        assert abs(float(g.weights[1]) - share) < 0.03
    assert all(float(g.weights[1]) == 0.5 for g in reference.gmms)  # the original is kept


def test_fit_splits_init_means_and_lrds_save_load_round_trips(tmp_path):
    system = ps.systems.get("manywell4")
    x = system.sample_exact(1000, torch.Generator().manual_seed(0))
    reference = D.BlockMixtureReference.fit(
        x, D.LinearVPSchedule(), block_size=2, n_components=2, init_means=system.modes
    )
    assert reference.fit_info["n_components"] == 4.0
    for g in reference.gmms:  # one component on each well, weights near 0.156 / 0.844
        order = g.means[:, 0].argsort()
        torch.testing.assert_close(g.means[order, 0], system.well.minima, atol=0.1, rtol=0)
        assert abs(float(g.weights[order][1]) - 0.844) < 0.05
    sampler = ps.methods.LRDS(system, reference=reference, n_steps=10, progress=False)
    again = ps.methods.LRDS.load(sampler.save(tmp_path / "lrds.pt"), system)
    assert isinstance(again.reference, D.BlockMixtureReference)
    t, y = _times(8, 1), x[:8]
    torch.testing.assert_close(again.reference.score(t, y), reference.score(t, y))


def test_argument_checks():
    x = torch.randn(50, 6, generator=torch.Generator().manual_seed(0), dtype=F64)
    with pytest.raises(ConfigError, match="block_size=4 must divide dim=6"):
        D.BlockMixtureReference.fit(x, D.LinearVPSchedule(), block_size=4)
    with pytest.raises(ConfigError, match="centre-of-mass"):
        D.BlockMixtureReference.fit(x, D.LinearVPSchedule(), D.GaussianSpace(6, 3, 2), block_size=2)
    with pytest.raises(ConfigError, match="OU schedule"):
        D.BlockMixtureReference(D.PinnedBrownianSchedule(), [_random_gmm(2, 2, 0)])
    with pytest.raises(ShapeError):
        D.BlockMixtureReference(D.LinearVPSchedule(), [_random_gmm(2, 2, 0), _random_gmm(2, 3, 0)])
    with pytest.raises(ShapeError):
        D.BlockMixtureReference(D.LinearVPSchedule(), [_random_gmm(2, 2, 0)], D.GaussianSpace(4))
