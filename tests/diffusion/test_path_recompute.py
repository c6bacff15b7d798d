"""Recomputing log-weights from stored states, and the chunked log-variance gradient."""

from __future__ import annotations

import itertools

import pytest
import torch
from diffusion_testlib import (
    F64,
    HarmonicCluster,
    RandomControl,
    TwoModes,
    make_reference,
    two_component_gmm,
)

from physsample import diffusion as D
from physsample.errors import ConfigError, ShapeError


def _setup(kind: str, n_steps: int = 5, com_free: bool = False, integrator: str = "exponential"):
    target = HarmonicCluster(3, 2, 0.5) if com_free else TwoModes([1.0, -0.5], 0.6, 2.0)
    space = D.GaussianSpace.for_system(target)
    reference = make_reference(kind, space)
    process = D.GenerativeProcess(reference, D.cosine_grid(n_steps), integrator)
    net = RandomControl(target.dim, seed=7, scale=0.3)
    return target, reference, process, net


def _simulate(process, control, target, n=64, seed=0, noise_scale=1.0, grad=False):
    with torch.set_grad_enabled(grad):
        return D.simulate(
            process,
            control,
            target.log_prob,
            n,
            generator=torch.Generator().manual_seed(seed),
            noise_scale=noise_scale,
            dtype=F64,
        )


@pytest.mark.parametrize("integrator", ["em", "exponential"])
@pytest.mark.parametrize(
    "kind, com_free", [(k, False) for k in ("dis", "dds", "pis", "gmm")] + [("gmm", True)]
)
def test_recomputed_log_weights_equal_those_of_the_simulation(kind, com_free, integrator):
    target, reference, process, net = _setup(kind, com_free=com_free, integrator=integrator)
    control = D.residual_control(reference, net)
    out = _simulate(process, control, target)
    params = list(net.parameters())
    with torch.no_grad():
        graph = D.log_weights_from_states(process, control, target.log_prob, out.states)
        chunked = D.log_weights_from_states(
            process, control, target.log_prob, out.states, chunk=2, params=params
        )
    torch.testing.assert_close(graph, out.log_weights)
    torch.testing.assert_close(chunked, out.log_weights)
    assert bool(torch.isfinite(out.log_weights).all())


def _grads(loss, params):
    return torch.autograd.grad(loss, params)


@pytest.mark.parametrize("chunk", [1, 3, 7])
@pytest.mark.parametrize("kind", ["dis", "pis", "gmm"])
def test_chunked_log_variance_gradient_equals_the_one_graph_gradient(kind, chunk):
    target, reference, process, net = _setup(kind, n_steps=7)
    control = D.residual_control(reference, net)
    params = list(net.parameters())
    out = _simulate(process, control, target, n=128, noise_scale=1.4)  # off-policy states
    one_graph = D.log_weights_from_states(process, control, target.log_prob, out.states)
    expected = _grads(D.log_variance_loss(one_graph)[0], params)
    chunked = D.log_weights_from_states(
        process,
        control,
        target.log_prob,
        out.states,
        chunk=chunk,
        params=params,
        log_weights=out.log_weights,
    )
    torch.testing.assert_close(chunked.detach(), one_graph.detach())
    loss, _ = D.log_variance_loss(chunked)
    loss.backward()
    for p, g in zip(params, expected, strict=True):
        torch.testing.assert_close(p.grad, g)


def test_chunked_gradient_reaches_a_trainable_mixture_prior():
    target = TwoModes([1.0, -0.5], 0.6, 2.0)
    gmm = two_component_gmm(2)
    trainable = D.GMM(gmm.means, gmm.log_eigvals.exp(), gmm.eigvecs, gmm.weights, trainable=True)
    reference = D.GaussianMixtureReference(D.LinearVPSchedule(0.1, 5.0), trainable)
    process = D.GenerativeProcess(reference, D.uniform_grid(4))
    net = RandomControl(2, seed=1, scale=0.3)
    control = D.residual_control(reference, net)
    params = list(net.parameters()) + list(reference.parameters())
    assert len(list(reference.parameters())) == 3
    out = _simulate(process, control, target, n=64)
    one_graph = D.log_weights_from_states(process, control, target.log_prob, out.states)
    expected = _grads(D.log_variance_loss(one_graph)[0], params)
    chunked = D.log_weights_from_states(
        process, control, target.log_prob, out.states, chunk=2, params=params
    )
    got = _grads(D.log_variance_loss(chunked)[0], params)
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e)
    assert float(got[-3].abs().sum()) > 0  # the mixture means do get a gradient


def test_default_params_are_those_of_a_module_control():
    target, reference, process, net = _setup("dis")  # base_control = 0: the net is the control
    out = _simulate(process, net, target)
    log_w = D.log_weights_from_states(process, net, target.log_prob, out.states, chunk=2)
    D.log_variance_loss(log_w)[0].backward()
    assert all(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in net.parameters())


def test_gradient_from_random_step_subsets_is_unbiased():
    """The mean over all subsets of m steps of the scaled subset gradient is the full one."""
    target, reference, process, net = _setup("dis", n_steps=5)
    params = list(net.parameters())
    out = _simulate(process, net, target, n=32)

    def gradient(steps):
        log_w = D.log_weights_from_states(
            process, net, target.log_prob, out.states, chunk=2, params=params, steps=steps
        )
        return torch.cat([g.reshape(-1) for g in _grads(D.log_variance_loss(log_w)[0], params)])

    full = gradient(None)
    subsets = list(itertools.combinations(range(5), 2))
    mean = torch.stack([gradient(list(s)) for s in subsets]).mean(dim=0)
    torch.testing.assert_close(mean, full)
    assert not torch.allclose(gradient([0, 1]), full)


def test_random_steps():
    steps = D.random_steps(10, 4, torch.Generator().manual_seed(0))
    assert steps == sorted(set(steps)) and len(steps) == 4 and 0 <= steps[0] and steps[-1] < 10
    assert steps == D.random_steps(10, 4, torch.Generator().manual_seed(0))
    with pytest.raises(ConfigError):
        D.random_steps(3, 4)


def test_pis_paths_start_at_the_origin_and_have_finite_weights():
    target, reference, process, net = _setup("pis")
    out = _simulate(process, net, target)
    assert torch.equal(out.states[:, 0], torch.zeros_like(out.states[:, 0]))
    assert bool(torch.isfinite(out.log_weights).all())


def test_simulation_is_reproducible_and_works_in_float32():
    target, reference, process, net = _setup("gmm")
    control = D.residual_control(reference, net)
    a, b = _simulate(process, control, target, seed=3), _simulate(process, control, target, seed=3)
    assert torch.equal(a.states, b.states) and torch.equal(a.log_weights, b.log_weights)
    with torch.no_grad():
        out = D.simulate(
            process,
            control,
            target.log_prob,
            256,
            generator=torch.Generator().manual_seed(0),
            dtype=torch.float32,
            keep_states=False,
        )
    assert out.states is None and out.samples.dtype == torch.float32
    assert out.log_weights.dtype == torch.float32 and bool(torch.isfinite(out.log_weights).all())
    out64 = _simulate(process, control, target, n=256, seed=0)
    with torch.no_grad():
        lw32 = D.log_weights_from_states(process, control, target.log_prob, out64.states.float())
    assert lw32.dtype == torch.float32
    torch.testing.assert_close(lw32.double(), out64.log_weights, atol=1e-3, rtol=1e-4)


def test_simulation_under_grad_is_reparameterised():
    target, reference, process, net = _setup("dds")
    out = _simulate(process, net, target, grad=True)
    assert out.log_weights.requires_grad
    D.reverse_kl_loss(out.log_weights)[0].backward()
    assert all(p.grad is not None for p in net.parameters())


def test_state_shape_and_chunk_checks():
    target, reference, process, net = _setup("dis")
    with pytest.raises(ShapeError):
        D.log_weights_from_states(process, net, target.log_prob, torch.zeros(4, 3, 2))
    states = torch.zeros(4, process.n_steps + 1, 2, dtype=F64)
    with pytest.raises(ConfigError):
        D.log_weights_from_states(process, net, target.log_prob, states, chunk=0)
    with pytest.raises(ConfigError):
        D.log_weights_from_states(process, net, target.log_prob, states, steps=[0])


def test_an_integer_grid_is_the_uniform_grid_on_the_horizon():
    reference = D.GaussianReference(D.PinnedBrownianSchedule(horizon=2.0), D.GaussianSpace(1))
    process = D.GenerativeProcess(reference, 4)
    torch.testing.assert_close(process.grid, D.uniform_grid(4, 2.0))
    assert "n_steps=4" in repr(process)


class CountingControl(torch.nn.Module):
    """Wraps a control and records the batch size of every call."""

    def __init__(self, inner) -> None:
        super().__init__()
        self.inner, self.calls = inner, []

    def forward(self, t, x):
        self.calls.append(x.shape[0])
        return self.inner(t, x)


def test_each_chunk_of_steps_is_one_control_call():
    target, reference, process, net = _setup("dis", n_steps=7)
    control = CountingControl(net)
    out = _simulate(process, control, target, n=16)
    control.calls.clear()
    log_w = D.log_weights_from_states(process, control, target.log_prob, out.states, chunk=3)
    assert control.calls == [48, 48, 16]  # forward recompute: steps 0-2, 3-5, 6
    control.calls.clear()
    D.log_variance_loss(log_w)[0].backward()
    assert control.calls == [48, 48, 16]
    torch.testing.assert_close(log_w.detach(), out.log_weights)


@pytest.mark.parametrize("kind", ["dds", "gmm"])
def test_gradient_of_a_scattered_step_subset_equals_the_per_step_one(kind):
    """Non-consecutive steps are stacked, not sliced: compare with one log F_k at a time."""
    target, reference, process, net = _setup(kind, n_steps=7, com_free=kind == "gmm")
    control = D.residual_control(reference, net)
    params = list(net.parameters())
    out = _simulate(process, control, target, n=64, noise_scale=1.3)
    steps = [0, 2, 3, 6]
    chunked = D.log_weights_from_states(
        process, control, target.log_prob, out.states, chunk=3, params=params, steps=steps
    )
    got = _grads(D.log_variance_loss(chunked)[0], params)
    c = process.coefficients(F64, "cpu")
    x = out.states
    log_f = sum(process.log_forward(c, k, x[:, k], x[:, k + 1], control) for k in steps)
    surrogate = -process.log_prior(x[:, 0]) - (7 / len(steps)) * log_f
    log_w = out.log_weights + surrogate - surrogate.detach()
    expected = _grads(D.log_variance_loss(log_w)[0], params)
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e)
