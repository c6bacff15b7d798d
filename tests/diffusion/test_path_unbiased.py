"""E[w] = Z for the discretised path weights, for any control and any number of steps.

Each case simulates many trajectories with a random, untrained control and checks that
the sample mean of w / Z is 1 within 4 standard errors of the mean. ``_check`` also
asks the standard error to be small (< 3.5 %), so that a bias of 15 % would be caught:
the test can fail.
"""

from __future__ import annotations

import math

import pytest
import torch
from diffusion_testlib import (
    F64,
    HarmonicCluster,
    RandomControl,
    ScaledGaussian,
    TwoModes,
    make_reference,
)

import physsample as ps
from physsample import diffusion as D

TARGETS = {
    "gauss1d": lambda: ScaledGaussian([0.5], [0.7], offset=-1.3),
    "two_modes2d": lambda: TwoModes([1.0, -0.5], std=0.6, log_z=2.0),
}
N_STEPS = {"em": 8, "exponential": 3}
KINDS = ["dis", "dds", "pis", "gmm"]


def _mean_weight(process, control, target, n, seed):
    with torch.no_grad():
        out = D.simulate(
            process,
            control,
            target.log_prob,
            n,
            generator=torch.Generator().manual_seed(seed),
            dtype=F64,
        )
    w = torch.exp(out.log_weights - target.log_z)
    return float(w.mean()), float(w.std() / math.sqrt(n)), out


def _check(mean, se, max_se=0.035):
    assert se < max_se, f"standard error {se:.3f} too large for the test to have power"
    assert abs(mean - 1.0) < 4 * se, f"mean w / Z = {mean:.4f} +- {se:.4f}"


@pytest.mark.parametrize("integrator", ["em", "exponential"])
@pytest.mark.parametrize("kind", ["dis", "dds", "pis", "gmm"])
@pytest.mark.parametrize("target_name", list(TARGETS))
def test_weights_are_unbiased(target_name, kind, integrator):
    target = TARGETS[target_name]()
    space = D.GaussianSpace(target.dim)
    reference = make_reference(kind, space)
    process = D.GenerativeProcess(reference, D.uniform_grid(N_STEPS[integrator]), integrator)
    seed = 100 * list(TARGETS).index(target_name) + 10 * KINDS.index(kind) + len(integrator)
    control = D.residual_control(reference, RandomControl(target.dim, seed=seed, scale=0.2))
    mean, se, _ = _mean_weight(process, control, target, 20_000, seed)
    _check(mean, se)


@pytest.mark.parametrize("kind", KINDS)
def test_weights_are_unbiased_on_the_com_free_space(kind):
    target = HarmonicCluster(n_particles=3, spatial_dim=2, k=0.5)
    space = D.GaussianSpace.for_system(target)
    assert space.effective_dim == 4
    reference = make_reference(kind, space)
    process = D.GenerativeProcess(reference, D.cosine_grid(6), "exponential")
    seed = 20 + KINDS.index(kind)
    control = D.residual_control(reference, RandomControl(target.dim, seed=seed, scale=0.1))
    mean, se, out = _mean_weight(process, control, target, 20_000, seed)
    torch.testing.assert_close(space.project(out.states), out.states)
    _check(mean, se)


@pytest.mark.parametrize("kind", ["pis", "dis"])
def test_weights_are_unbiased_on_gmm25(kind):
    target = ps.systems.get("gmm25")
    space = D.GaussianSpace(2)
    if kind == "pis":
        reference = D.GaussianReference(D.PinnedBrownianSchedule(sigma=7.0), space)
    else:
        reference = D.GaussianReference(D.LinearVPSchedule(0.1, 8.0, sigma=7.0), space)
    process = D.GenerativeProcess(reference, D.uniform_grid(5), "exponential")
    control = D.residual_control(reference, RandomControl(2, seed=1, scale=0.03))
    mean, se, _ = _mean_weight(process, control, target, 20_000, seed=5)
    _check(mean, se)


def test_the_check_detects_a_ten_percent_bias():
    target = TARGETS["two_modes2d"]()
    reference = make_reference("dis", D.GaussianSpace(2))
    process = D.GenerativeProcess(reference, D.uniform_grid(3), "exponential")
    control = D.residual_control(reference, RandomControl(2, seed=0, scale=0.3))
    mean, se, _ = _mean_weight(process, control, target, 20_000, seed=0)
    _check(mean, se)
    with pytest.raises(AssertionError):
        _check(mean * 1.1, se * 1.1)


def test_zero_control_with_the_stationary_prior_gives_constant_weights():
    """Stationary OU from N(0, sigma^2) towards a target proportional to N(0, sigma^2)."""
    sigma = 1.5
    target = ScaledGaussian([0.0, 0.0], [sigma, sigma], offset=0.7)
    reference = D.GaussianReference(D.ConstantOUSchedule(beta=2.0, sigma=sigma), D.GaussianSpace(2))
    process = D.GenerativeProcess(reference, D.cosine_grid(7), "exponential")
    _, _, out = _mean_weight(process, lambda t, x: torch.zeros_like(x), target, 100, seed=0)
    expected = torch.full_like(out.log_weights, target.log_z)
    torch.testing.assert_close(out.log_weights, expected)
