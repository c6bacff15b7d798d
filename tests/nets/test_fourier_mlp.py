"""FourierMLP: zero at initialisation, shapes, gradients, the score input, float64."""

from __future__ import annotations

import pytest
import torch

import physsample as ps
from physsample.errors import ConfigError, ShapeError
from physsample.nets import FourierMLP

DIM = 6


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny networks run faster on one thread, above all on a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _inputs(batch=5, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    t = torch.rand(batch, generator=g, dtype=dtype)
    x = torch.randn(batch, DIM, generator=g, dtype=dtype)
    s = torch.randn(batch, DIM, generator=g, dtype=dtype)
    return t, x, s


def _one_adam_step(net, *args, **kwargs):
    """One Adam step towards a fixed random target; returns the optimiser."""
    target = torch.randn(args[1].shape, generator=torch.Generator().manual_seed(1))
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
    loss = ((net(*args, **kwargs) - target.to(args[1].dtype)) ** 2).mean()
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()
    return optimizer


def test_exported_from_the_package():
    assert ps.nets.FourierMLP is FourierMLP


@pytest.mark.parametrize("score_input", [False, True])
def test_untrained_control_is_exactly_zero(score_input):
    torch.manual_seed(0)
    net = FourierMLP(DIM, hidden=32, score_input=score_input)
    t, x, s = _inputs()
    out = net(t, x, score=s) if score_input else net(t, x)
    assert out.shape == (5, DIM)
    assert torch.equal(out, torch.zeros_like(out))


def test_shapes_and_time_broadcasting():
    torch.manual_seed(0)
    net = FourierMLP(DIM, hidden=16, n_layers=2, n_frequencies=4, activation="silu")
    with torch.no_grad():
        net.body[-1].weight.normal_()
    t, x, _ = _inputs(batch=7)
    assert net(t, x).shape == (7, DIM)
    assert net(t[:, None], x).shape == (7, DIM)
    full = net(torch.full((7,), 0.3), x)
    torch.testing.assert_close(net(0.3, x), full)
    torch.testing.assert_close(net(torch.tensor(0.3), x), full)
    assert not torch.allclose(net(0.1, x), net(0.9, x)), "output does not depend on time"


def test_bad_inputs_raise_clear_errors():
    net = FourierMLP(DIM, hidden=8)
    t, x, s = _inputs()
    with pytest.raises(ShapeError, match=r"\(B, 6\)"):
        net(t, x[:, :4])
    with pytest.raises(ShapeError, match="t must be"):
        net(t[:3], x)
    with pytest.raises(ConfigError, match="score_input"):
        net(t, x, score=s)
    scored = FourierMLP(DIM, hidden=8, score_input=True)
    with pytest.raises(ConfigError, match="score=s"):
        scored(t, x)
    with pytest.raises(ShapeError, match="score"):
        scored(t, x, score=s[:, :2])
    with pytest.raises(ConfigError, match="activation"):
        FourierMLP(DIM, activation="swish2")


@pytest.mark.parametrize("score_input", [False, True])
def test_gradient_reaches_every_parameter_after_one_step(score_input):
    torch.manual_seed(0)
    net = FourierMLP(DIM, hidden=16, n_layers=2, score_input=score_input)
    t, x, s = _inputs()
    kwargs = {"score": s} if score_input else {}
    _one_adam_step(net, t, x, **kwargs)
    net(t, x, **kwargs).pow(2).sum().backward()
    for name, param in net.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name


def test_score_input_changes_the_output_after_a_training_step():
    torch.manual_seed(0)
    net = FourierMLP(DIM, hidden=16, score_input=True)
    t, x, s = _inputs()
    before = net(t, x, score=s).detach()
    assert torch.equal(before, net(t, x, score=2 * s))  # untrained: score ignored
    _one_adam_step(net, t, x, score=s)
    with torch.no_grad():
        u1, u2, u0 = net(t, x, score=s), net(t, x, score=2 * s), net(t, x, score=0 * s)
    assert (u1 - u2).abs().max() > 1e-4, "the score does not change the trained output"
    # documented form: u = MLP(t, x) + MLP_t(t) * s, affine in the score
    torch.testing.assert_close(u2 - u0, 2 * (u1 - u0))


def test_float64_forward_and_gradcheck():
    torch.manual_seed(0)
    net = FourierMLP(3, hidden=8, n_layers=1, n_frequencies=3, score_input=True).double()
    with torch.no_grad():
        for param in net.parameters():
            param.add_(0.1 * torch.randn_like(param))
    t = torch.rand(4, dtype=torch.float64)
    x = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    s = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    out = net(t, x, score=s)
    assert out.dtype == torch.float64
    assert torch.autograd.gradcheck(lambda x, s: net(t, x, score=s), (x, s))


def _random_net(score_input: bool, dtype: torch.dtype) -> FourierMLP:
    torch.manual_seed(0)
    net = FourierMLP(DIM, hidden=16, n_layers=2, score_input=score_input).to(dtype)
    with torch.no_grad():
        for param in net.parameters():
            param.add_(0.3 * torch.randn_like(param))
    return net


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("score_input", [False, True])
def test_shared_time_is_embedded_once_and_equals_the_per_row_output(score_input, dtype):
    """A scalar or expanded t (the step loop's t_k.expand(B)) embeds one row, broadcast."""
    net = _random_net(score_input, dtype)
    _, x, s = _inputs(batch=9, dtype=dtype)
    kwargs = {"score": s} if score_input else {}
    rows = []
    net.time_embed.register_forward_hook(lambda module, inputs, out: rows.append(out.shape[0]))
    t_k = torch.tensor(0.37, dtype=dtype)
    per_row = net(t_k.repeat(9), x, **kwargs)  # contiguous: the per-row path
    for shared in (t_k.expand(9), t_k, 0.37, t_k.expand(9, 1)):
        torch.testing.assert_close(net(shared, x, **kwargs), per_row)
    assert rows == [9, 1, 1, 1, 1]
    # gradients too (the embedding's are summed over the batch by the broadcast)
    grads = [torch.autograd.grad(net(t, x, **kwargs).sum(), list(net.parameters()))
             for t in (t_k.repeat(9), t_k.expand(9))]  # fmt: skip
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b)


def test_broadcast_time_still_gives_one_time_per_row():
    x = torch.zeros(4, DIM)
    assert FourierMLP._broadcast_time(0.5, x).shape == (4,)
    assert FourierMLP._broadcast_time(torch.full((4, 1), 0.5), x).shape == (4,)
    with pytest.raises(ShapeError, match="t must be"):
        FourierMLP._broadcast_time(torch.zeros(3), x)
