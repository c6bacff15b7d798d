"""EGNN baseline: zero at initialisation, E(d) and permutation symmetry, gradients."""

from __future__ import annotations

import pytest
import torch
from nets_testlib import F64
from nets_testlib import inputs as _inputs
from nets_testlib import orthogonal as _orthogonal

import physsample as ps
from physsample.errors import ConfigError, ShapeError
from physsample.nets import EGNN


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _net(n, d, seed=0, **kwargs):
    """A small float64 EGNN with every parameter (the zero layers included) non-zero."""
    torch.manual_seed(seed)
    net = EGNN(n, d, hidden=8, n_layers=2, n_frequencies=4, **kwargs).double()
    with torch.no_grad():
        for param in net.parameters():
            param.add_(0.3 * torch.randn_like(param))
    return net


def _call(net, t, x, s, score):
    return net(t, x, score=s) if score else net(t, x)


def test_exported_from_the_package():
    assert ps.nets.EGNN is EGNN


@pytest.mark.parametrize("score", [False, True])
def test_untrained_control_is_exactly_zero(score):
    torch.manual_seed(0)
    net = EGNN(4, 2, hidden=16, score_input=score)
    t, x, s = (y.float() for y in _inputs(4, 2))
    out = _call(net, t, x, s, score)
    assert out.shape == (3, 8)
    assert torch.equal(out, torch.zeros_like(out))
    (out - x).square().sum().backward()  # the zero last layers still get a gradient
    assert net.layers[0].coord[-1].weight.grad.abs().max() > 0


@pytest.mark.parametrize("n, d", [(4, 2), (5, 3)])
@pytest.mark.parametrize("score", [False, True])
def test_equivariant_to_float_tolerance(n, d, score):
    net = _net(n, d, score_input=score)
    t, x, s = _inputs(n, d)
    out = _call(net, t, x, s, score)
    assert out.abs().max() > 1e-3

    def act(q, y):
        return (y.reshape(-1, n, d) @ q.T).reshape(y.shape)

    for reflect in (False, True):
        q = _orthogonal(d, reflect)
        torch.testing.assert_close(_call(net, t, act(q, x), act(q, s), score), act(q, out))
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(3))

    def permute(y):
        return y.reshape(-1, n, d)[:, perm].reshape(y.shape)

    torch.testing.assert_close(_call(net, t, permute(x), permute(s), score), permute(out))
    shift = torch.randn(1, d, dtype=F64).repeat(1, n)
    torch.testing.assert_close(_call(net, t, x + shift, s, score), out)
    assert out.reshape(-1, n, d).mean(dim=1).abs().max() < 1e-12


@pytest.mark.parametrize("score", [False, True])
def test_one_step_trains_every_parameter(score):
    torch.manual_seed(0)
    net = EGNN(4, 2, hidden=8, n_layers=2, score_input=score).double()
    t, x, s = _inputs(4, 2)
    kwargs = {"score": s} if score else {}
    target = torch.randn(x.shape, generator=torch.Generator().manual_seed(4), dtype=F64)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
    ((net(t, x, **kwargs) - target) ** 2).mean().backward()
    optimizer.step()
    optimizer.zero_grad()
    assert net(t, x, **kwargs).abs().max() > 0
    net(t, x, **kwargs).pow(2).sum().backward()
    for name, param in net.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name


def test_gradcheck_and_dtypes():
    net = _net(3, 3, score_input=True)
    t, x, s = _inputs(3, 3, batch=2)
    x.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: net(t, x, score=s), (x,))
    assert net.float()(t.float(), x.detach().float(), score=s.float()).dtype == torch.float32


def test_bad_inputs_raise_clear_errors():
    net = EGNN(4, 2, hidden=4)
    t, x, s = (y.float() for y in _inputs(4, 2))
    with pytest.raises(ShapeError, match=r"\(B, 8\)"):
        net(t, x[:, :6])
    with pytest.raises(ConfigError, match="score_input"):
        net(t, x, score=s)
    with pytest.raises(ConfigError, match="score=s"):
        EGNN(4, 2, hidden=4, score_input=True)(t, x)
    with pytest.raises(ConfigError, match="n_particles"):
        EGNN(1, 2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu():
    net = _net(5, 3)
    t, x, _ = _inputs(5, 3)
    expected = net(t, x)
    torch.testing.assert_close(net.cuda()(t.cuda(), x.cuda()).cpu(), expected)
