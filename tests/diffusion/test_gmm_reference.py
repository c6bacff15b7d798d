"""Gaussian-mixture references: closed-form noised densities, scores and samples."""

from __future__ import annotations

import math

import pytest
import torch
from diffusion_testlib import F64, MixtureTarget, two_component_gmm

from physsample import diffusion as D
from physsample.errors import ConfigError, ShapeError


def _three_component_gmm(covariance: str) -> D.GMM:
    g = torch.Generator().manual_seed(0)
    means = torch.tensor([[-3.0, 0.0], [3.0, 1.0], [0.0, 3.5]], dtype=F64)
    if covariance == "diag":
        cov = torch.rand(3, 2, generator=g, dtype=F64) * 0.5 + 0.2
    else:
        a = torch.randn(3, 2, 2, generator=g, dtype=F64) * 0.6
        cov = a @ a.transpose(1, 2) + 0.1 * torch.eye(2, dtype=F64)
    return D.GMM.from_covariances(means, cov, torch.tensor([0.2, 0.5, 0.3], dtype=F64))


@pytest.mark.parametrize("covariance", ["full", "diag"])
def test_noised_log_prob_matches_torch_distributions(covariance):
    gmm = _three_component_gmm(covariance)
    a, c = 0.6, 0.4
    cov = a**2 * gmm.covariances() + c * torch.eye(2, dtype=F64)
    mix = torch.distributions.MixtureSameFamily(
        torch.distributions.Categorical(probs=gmm.weights),
        torch.distributions.MultivariateNormal(a * gmm.means, covariance_matrix=cov),
    )
    x = torch.randn(50, 2, generator=torch.Generator().manual_seed(1), dtype=F64) * 3
    torch.testing.assert_close(gmm.log_prob(x, a, c), mix.log_prob(x))


@pytest.mark.parametrize("covariance", ["full", "diag"])
def test_reference_score_matches_autograd_of_its_log_density(covariance):
    reference = D.GaussianMixtureReference(
        D.LinearVPSchedule(0.1, 10.0), _three_component_gmm(covariance)
    )
    g = torch.Generator().manual_seed(2)
    x = torch.randn(64, 2, generator=g, dtype=F64) * 3
    t = torch.rand(64, generator=g, dtype=F64)  # a different time for each point
    xg = x.clone().requires_grad_(True)
    (expected,) = torch.autograd.grad(reference.log_prob(t, xg).sum(), xg)
    torch.testing.assert_close(reference.score(t, x), expected)


def test_com_free_reference_score_matches_autograd_and_stays_in_the_subspace():
    space = D.GaussianSpace(6, n_particles=3, spatial_dim=2)
    reference = D.GaussianMixtureReference(D.LinearVPSchedule(), two_component_gmm(4), space)
    g = torch.Generator().manual_seed(3)
    x = space.project(torch.randn(16, 6, generator=g, dtype=F64))
    t = torch.rand(16, generator=g, dtype=F64)
    xg = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(reference.log_prob(t, xg).sum(), xg)
    score = reference.score(t, x)
    torch.testing.assert_close(score, space.project(grad))
    torch.testing.assert_close(space.project(score), score)


def test_marginals_interpolate_between_the_mixture_and_the_noised_prior():
    gmm = _three_component_gmm("full")
    schedule = D.LinearVPSchedule(0.1, 10.0, sigma=1.0)
    reference = D.GaussianMixtureReference(schedule, gmm)
    x = torch.randn(10, 2, generator=torch.Generator().manual_seed(4), dtype=F64)
    at_target = torch.full((10,), schedule.horizon, dtype=F64)
    torch.testing.assert_close(reference.log_prob(at_target, x), gmm.log_prob(x))
    a0, c0 = schedule.noising(torch.tensor(1.0, dtype=F64), torch.tensor(0.0, dtype=F64))
    torch.testing.assert_close(reference.prior_log_prob(x), gmm.log_prob(x, a0, c0))


def test_prior_samples_have_the_noised_mixture_moments():
    gmm = _three_component_gmm("full")
    schedule = D.LinearVPSchedule(0.1, 2.0)  # little noise: the mixture is still visible
    reference = D.GaussianMixtureReference(schedule, gmm)
    n = 40_000
    x = reference.sample_prior(n, torch.Generator().manual_seed(5), dtype=F64)
    a, c = reference.marginal(torch.tensor(0.0, dtype=F64))
    w = gmm.weights[:, None]
    mean = (w * a * gmm.means).sum(0)
    second = (w[:, :, None] * (a**2 * gmm.covariances() + c * torch.eye(2, dtype=F64))).sum(0)
    second = second + (w[:, :, None] * (a * gmm.means)[:, :, None] * (a * gmm.means)[:, None]).sum(
        0
    )
    cov = second - mean[:, None] * mean[None]
    sd = cov.diagonal().sqrt()
    assert bool(((x.mean(0) - mean).abs() < 5 * sd / math.sqrt(n)).all())
    centred = x - x.mean(0)
    products = centred[:, :, None] * centred[:, None, :]  # (n, 2, 2)
    se = products.std(dim=0) / math.sqrt(n)  # standard error of each covariance entry
    assert bool(((products.mean(0) - cov).abs() < 5 * se).all())


def test_untrained_sampler_of_a_gmm_reference_on_the_same_gmm_target_is_near_exact():
    """Control = base_control (phi = 0), 100 steps from p_0^ref: ESS > 0.8."""
    gmm = _three_component_gmm("full")
    target = MixtureTarget(gmm)
    reference = D.GaussianMixtureReference(D.LinearVPSchedule(0.1, 10.0), gmm)
    process = D.GenerativeProcess(reference, D.uniform_grid(100), "exponential")
    with torch.no_grad():
        out = D.simulate(
            process,
            reference.base_control,
            target.log_prob,
            2000,
            generator=torch.Generator().manual_seed(6),
            dtype=F64,
        )
    est = D.log_z_estimate(out.log_weights)
    assert float(est.ess) > 0.8
    assert abs(float(est.log_z)) < 0.05


def test_gaussian_references():
    space = D.GaussianSpace(3)
    pis = D.GaussianReference(D.PinnedBrownianSchedule(sigma=2.0), space)
    assert pis.prior_is_delta
    x0 = pis.sample_prior(5, torch.Generator().manual_seed(0), dtype=F64)
    assert torch.equal(x0, torch.zeros(5, 3, dtype=F64))
    t = torch.full((4,), 0.5, dtype=F64)
    x = torch.randn(4, 3, dtype=F64, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(pis.score(t, x), -x / (4.0 * 0.5))
    dds = D.GaussianReference(D.ConstantOUSchedule(sigma=2.0), space)
    assert not dds.prior_is_delta
    expected = torch.distributions.Normal(0.0, 2.0).log_prob(x).sum(1)
    torch.testing.assert_close(dds.prior_log_prob(x), expected)
    torch.testing.assert_close(dds.base_control(t, x), torch.zeros_like(x))


def test_gmm_reference_argument_checks():
    with pytest.raises(ConfigError, match="OU schedule"):
        D.GaussianMixtureReference(D.PinnedBrownianSchedule(), two_component_gmm(2))
    with pytest.raises(ShapeError):
        D.GaussianMixtureReference(
            D.LinearVPSchedule(), two_component_gmm(6), D.GaussianSpace(6, 3, 2)
        )
    with pytest.raises(ConfigError):
        D.GMM(torch.zeros(2, 2), -torch.ones(2, 2))
