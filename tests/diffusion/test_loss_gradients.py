"""Losses: gradients against exact answers, dropping of bad trajectories, log Z estimates.

The gradient tests use a case where everything is Gaussian: a 1-D VP-OU sampler with a
linear control u(t, x) = th0 + th1 x + th2 t and a Gaussian target. The path
z = (x_0, ..., x_N) is then Gaussian with mean mu(th) and covariance S(th), and the path
log-weight f_th(z) is a quadratic form in z, so (H its Hessian, g its gradient at mu)

    E[f] = f(mu) + tr(H S) / 2,        Var[f] = g' S g + tr(H S H S) / 2

exactly. Autograd through these formulas gives the exact gradients of the expected
reverse-KL loss and of the log-variance loss, which the Monte-Carlo gradients of
``reverse_kl_loss`` and ``log_variance_loss`` must match within 4 standard errors.
"""

from __future__ import annotations

import math

import pytest
import torch
from diffusion_testlib import F64, ScaledGaussian
from torch import nn

from physsample import diffusion as D

THETA = [0.3, -0.4, 0.5]
SIGMA = 1.0


class LinearControl(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.theta = nn.Parameter(torch.tensor(THETA, dtype=F64))

    def forward(self, t, x):
        th = self.theta.to(x.dtype)
        return th[0] + th[1] * x + th[2] * t[:, None]


def _case():
    target = ScaledGaussian([0.4], [0.6], offset=-0.5)
    reference = D.GaussianReference(D.LinearVPSchedule(0.1, 5.0, sigma=SIGMA), D.GaussianSpace(1))
    process = D.GenerativeProcess(reference, D.uniform_grid(3), "exponential")
    return target, process


def _normal(z, mean, var):
    return -0.5 * ((z - mean) ** 2 / var + torch.log(2 * math.pi * var))


def _path_log_weight(z, theta, c, target):
    """f_theta(z) for one path z (N + 1,), written out term by term."""
    f = -target.energy(z[-1:].reshape(1, 1))[0] - _normal(
        z[0], 0.0, torch.tensor(SIGMA**2, dtype=F64)
    )
    for k in range(z.shape[0] - 1):
        u = theta[0] + theta[1] * z[k] + theta[2] * c.times[k]
        f = f + _normal(z[k], c.noise_mean_factor[k] * z[k + 1], c.noise_variance[k])
        f = f - _normal(z[k + 1], c.state_factor[k] * z[k] + c.control_factor[k] * u, c.variance[k])
    return f


def _path_moments(theta, c, noise_scale=1.0):
    """Mean (N + 1,) and covariance of the path under the sampler with control theta."""
    n = c.variance.shape[0]
    mean, rows = [torch.zeros((), dtype=F64)], [torch.eye(n + 1, dtype=F64)[0] * SIGMA]
    for k in range(n):
        slope = c.state_factor[k] + c.control_factor[k] * theta[1]
        shift = c.control_factor[k] * (theta[0] + theta[2] * c.times[k])
        mean.append(slope * mean[-1] + shift)
        rows.append(
            slope * rows[-1]
            + noise_scale * c.variance[k].sqrt() * torch.eye(n + 1, dtype=F64)[k + 1]
        )
    root = torch.stack(rows)
    return torch.stack(mean), root @ root.T


def _quadratic(theta, mu, c, target):
    f = lambda z: _path_log_weight(z, theta, c, target)  # noqa: E731
    value = f(mu)
    grad = torch.autograd.functional.jacobian(f, mu, create_graph=True)
    hess = torch.autograd.functional.hessian(f, mu, create_graph=True)
    return value, grad, hess


def _exact_kl_gradient(target, process):
    c = process.coefficients(F64, "cpu")
    theta = torch.tensor(THETA, dtype=F64, requires_grad=True)
    mu, cov = _path_moments(theta, c)
    value, _, hess = _quadratic(theta, mu, c, target)
    expected_loss = -(value + 0.5 * torch.trace(hess @ cov))
    return expected_loss.detach(), torch.autograd.grad(expected_loss, theta)[0]


def _exact_lv_gradient(target, process, noise_scale):
    c = process.coefficients(F64, "cpu")
    theta = torch.tensor(THETA, dtype=F64, requires_grad=True)
    mu, cov = _path_moments(theta.detach(), c, noise_scale)  # sampling law: stop-gradient
    _, grad, hess = _quadratic(theta, mu, c, target)
    variance = grad @ cov @ grad + 0.5 * torch.trace(hess @ cov @ hess @ cov)
    return variance.detach(), torch.autograd.grad(variance, theta)[0]


def _mc_gradients(loss_fn, repeats, seed):
    grads, values = [], []
    control = LinearControl()
    for r in range(repeats):
        control.zero_grad()
        loss = loss_fn(control, torch.Generator().manual_seed(seed + r))
        loss.backward()
        grads.append(control.theta.grad.clone())
        values.append(loss.detach())
    grads, values = torch.stack(grads), torch.stack(values)
    return (
        grads.mean(0),
        grads.std(0) / math.sqrt(repeats),
        values.mean(),
        values.std() / math.sqrt(repeats),
    )


def _assert_matches(mc, se, exact):
    assert bool((se < 0.2 * exact.abs().max()).all()), f"standard errors {se} too large vs {exact}"
    assert bool(((mc - exact).abs() < 4 * se).all()), f"MC {mc} +- {se} vs exact {exact}"


def test_reverse_kl_gradient_matches_the_exact_gradient():
    target, process = _case()
    exact_loss, exact_grad = _exact_kl_gradient(target, process)

    def loss_fn(control, generator):
        out = D.simulate(process, control, target.log_prob, 4000, generator=generator, dtype=F64)
        return D.reverse_kl_loss(out.log_weights, max_deviation=None)[0]

    grad, se, loss, loss_se = _mc_gradients(loss_fn, repeats=16, seed=0)
    assert abs(float(loss - exact_loss)) < 4 * float(loss_se)
    _assert_matches(grad, se, exact_grad)


@pytest.mark.parametrize("noise_scale", [1.0, 1.3])
def test_log_variance_gradient_matches_the_exact_gradient(noise_scale):
    target, process = _case()
    exact_var, exact_grad = _exact_lv_gradient(target, process, noise_scale)

    def loss_fn(control, generator):
        with torch.no_grad():
            out = D.simulate(
                process,
                control,
                target.log_prob,
                4000,
                generator=generator,
                noise_scale=noise_scale,
                dtype=F64,
            )
        log_w = D.log_weights_from_states(
            process, control, target.log_prob, out.states, chunk=1, log_weights=out.log_weights
        )
        return D.log_variance_loss(log_w, max_deviation=None)[0]

    grad, se, var, var_se = _mc_gradients(loss_fn, repeats=16, seed=int(100 * noise_scale))
    assert abs(float(var - exact_var)) < 4 * float(var_se)
    _assert_matches(grad, se, exact_grad)


def test_losses_drop_and_count_bad_trajectories():
    log_w = torch.tensor([0.0, 1.0, 2.0, math.nan, math.inf, -math.inf, 5000.0, 1.5], dtype=F64)
    log_w.requires_grad_(True)
    loss, info = D.log_variance_loss(log_w, max_deviation=100.0)
    assert (
        int(info["n_used"]) == 4 and int(info["n_nonfinite"]) == 3 and int(info["n_extreme"]) == 1
    )
    kept = torch.tensor([0.0, 1.0, 2.0, 1.5], dtype=F64)
    torch.testing.assert_close(loss, kept.var())
    (grad,) = torch.autograd.grad(loss, log_w)
    assert bool(torch.isfinite(grad).all())
    assert float(grad[3:7].abs().sum()) == 0.0
    kl, kl_info = D.reverse_kl_loss(log_w, max_deviation=100.0)
    torch.testing.assert_close(kl, -kept.mean())
    assert int(kl_info["n_extreme"]) == 1
    _, keep_all = D.usable_mask(log_w, None)
    assert int(keep_all["n_used"]) == 5


def test_a_batch_without_two_usable_trajectories_gives_a_nan_loss():
    log_w = torch.tensor([1.0, math.nan, math.nan], dtype=F64)
    assert math.isnan(float(D.log_variance_loss(log_w)[0]))
    assert math.isnan(float(D.reverse_kl_loss(log_w)[0]))


def test_log_z_estimate():
    est = D.log_z_estimate(torch.full((8,), 2.5))
    assert float(est.log_z) == pytest.approx(2.5) and float(est.ess) == pytest.approx(1.0)
    one = D.log_z_estimate(torch.tensor([0.0, -1e4, -1e4, -math.inf]))
    assert float(one.ess) == pytest.approx(0.25) and float(one.log_z) == pytest.approx(-math.log(4))
    log_w = torch.randn(1000, generator=torch.Generator().manual_seed(0), dtype=F64)
    w = log_w.exp()
    est = D.log_z_estimate(log_w)
    assert float(est.log_z) == pytest.approx(math.log(float(w.mean())))
    assert float(est.elbo) == pytest.approx(float(log_w.mean()))
    assert float(est.ess) == pytest.approx(float(w.sum() ** 2 / (1000 * (w**2).sum())))
    assert est.log_z.dtype == F64
