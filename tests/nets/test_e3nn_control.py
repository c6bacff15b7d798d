"""E3NNControl: zero at initialisation, O(3) / permutation / translation symmetry, the
fast kernels against e3nn's tensor product, gradients, dtypes, devices."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import pytest
import torch
from nets_testlib import F64
from nets_testlib import inputs as _inputs
from nets_testlib import orthogonal as _orthogonal

import physsample as ps
from physsample.errors import ConfigError, ShapeError
from physsample.nets import E3NNControl
from physsample.nets.e3nn_control import DenseConvolution, _NeighbourSum, _SmallBmm


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny networks run faster on one thread, above all on a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@contextlib.contextmanager
def _float64_default():
    """Build under float64, so that constants (Wigner 3j symbols) are exact in float64."""
    before = torch.get_default_dtype()
    torch.set_default_dtype(F64)
    try:
        yield
    finally:
        torch.set_default_dtype(before)


def _build(n, d, **kwargs):
    options = dict(channels=4, n_layers=2, n_radial=6, radial_hidden=5, n_frequencies=4)
    with _float64_default():
        return E3NNControl(n, d, **{**options, **kwargs})


def _net(n=5, d=3, seed=0, **kwargs):
    """A small float64 network with all parameters (readout included) made non-zero."""
    torch.manual_seed(seed)
    net = _build(n, d, **kwargs)
    with torch.no_grad():
        for param in net.parameters():
            param.add_(0.3 * torch.randn_like(param))
    return net


def _act(q, x, n, d):
    """Apply the orthogonal matrix ``q`` to every particle of flat ``x`` (B, n d)."""
    return (x.reshape(-1, n, d) @ q.T).reshape(x.shape)


def _call(net, t, x, s, score):
    return net(t, x, score=s) if score else net(t, x)


def _assert_symmetric(net, n, d, score):
    """O(d) equivariance (rotations and reflections), permutations, translations."""
    t, x, s = _inputs(n, d)
    out = _call(net, t, x, s, score)
    assert out.abs().max() > 1e-3, "trivial output: the test would prove nothing"
    for reflect in (False, True):
        q = _orthogonal(d, reflect)
        rotated = _call(net, t, _act(q, x, n, d), _act(q, s, n, d), score)
        torch.testing.assert_close(rotated, _act(q, out, n, d), rtol=1e-10, atol=1e-10)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(3))

    def permute(y):
        return y.reshape(-1, n, d)[:, perm].reshape(y.shape)

    torch.testing.assert_close(
        _call(net, t, permute(x), permute(s), score), permute(out), rtol=1e-10, atol=1e-10
    )
    shift = torch.randn(1, d, dtype=F64).repeat(1, n)
    torch.testing.assert_close(_call(net, t, x + shift, s, score), out, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(
        out.reshape(-1, n, d).mean(dim=1),
        torch.zeros(out.shape[0], d, dtype=F64),
        rtol=0,
        atol=1e-12,
    )


def _one_adam_step(net, t, x, **kwargs):
    target = torch.randn(x.shape, generator=torch.Generator().manual_seed(4), dtype=x.dtype)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
    ((net(t, x, **kwargs) - target) ** 2).mean().backward()
    optimizer.step()
    optimizer.zero_grad()


def test_exported_from_the_package():
    assert ps.nets.E3NNControl is E3NNControl


@pytest.mark.parametrize("n, d", [(4, 2), (5, 3)])
@pytest.mark.parametrize("score", [False, True])
def test_untrained_control_is_exactly_zero(n, d, score):
    torch.manual_seed(0)
    net = E3NNControl(n, d, channels=4, n_layers=2, score_input=score)
    t, x, s = (y.float() for y in _inputs(n, d))
    out = _call(net, t, x, s, score)
    assert out.shape == (3, n * d) and out.dtype == torch.float32
    assert torch.equal(out, torch.zeros_like(out))
    (out - x).square().sum().backward()  # the zero last layer still gets a gradient
    assert net.readout.weight.grad.abs().max() > 0


@pytest.mark.parametrize(
    "n, d, kernel",
    [
        (4, 2, "batch_last"),
        (5, 3, "batch_last"),
        (5, 3, "factorised"),
        (4, 2, "dense"),
    ],
)
@pytest.mark.parametrize("score", [False, True])
def test_equivariant_to_float_tolerance(n, d, kernel, score):
    _assert_symmetric(_net(n, d, kernel=kernel, score_input=score), n, d, score)


def test_lmax_2_is_equivariant():
    _assert_symmetric(_net(4, 3, lmax=2), 4, 3, score=False)


def test_radial_cutoff_keeps_symmetry_and_drops_distant_pairs():
    net = _net(5, 3, r_cut=2.0)
    _assert_symmetric(net, 5, 3, score=False)
    pos = torch.tensor(
        [[[0.0, 0, 0], [1.0, 0, 0], [0, 3.0, 0], [0, 0, 1.5], [3.0, 3.0, 3.0]]], dtype=F64
    )
    phi = net._radial_features(pos)
    dist = torch.cdist(pos, pos)[0]
    assert phi.shape == (6, 5, 5, 1)  # (radial_hidden + 1, n, n, batch)
    assert phi[..., 0][:, dist > 2.0].abs().max() < 1e-6
    assert phi[..., 0][:, (dist < 1.9) & (dist > 0)].abs().min() > 1e-6  # the constant feature


def test_two_dimensional_output_is_the_planar_part_of_the_3d_network():
    """DW-4 is embedded at z = 0: the 3-D network with the same weights gives no z part."""
    net2 = _net(4, 2, score_input=True)
    net3 = _build(4, 3, score_input=True)
    net3.load_state_dict(net2.state_dict())
    t, x, s = _inputs(4, 2)

    def embed(y):
        return torch.cat([y.reshape(-1, 4, 2), torch.zeros(3, 4, 1, dtype=F64)], -1).reshape(3, 12)

    out3 = net3(t, embed(x), score=embed(s)).reshape(3, 4, 3)
    assert out3[..., 2].abs().max() < 1e-12
    torch.testing.assert_close(out3[..., :2].reshape(3, 8), net2(t, x, score=s))


@pytest.mark.parametrize("n, d, lmax", [(4, 2, 1), (6, 3, 1), (4, 3, 2)])
def test_fast_kernels_match_the_e3nn_tensor_product(n, d, lmax):
    reference = _net(n, d, lmax=lmax, kernel="e3nn", score_input=True)
    t, x, s = _inputs(n, d)
    expected = reference(t, x, score=s)
    kernels = ["batch_last", "factorised", "dense"] if lmax == 1 else ["dense"]
    for kernel in kernels:
        net = _build(n, d, lmax=lmax, kernel=kernel, score_input=True)
        net.load_state_dict(reference.state_dict())
        torch.testing.assert_close(net(t, x, score=s), expected, rtol=1e-10, atol=1e-10)


def test_convolution_matches_a_loop_over_pairs():
    """The definition, edge by edge, with e3nn's tensor product and spherical harmonics."""
    torch.manual_seed(0)
    with _float64_default():
        conv = DenseConvolution("3x0e + 3x1o", n_features=4, kernel="batch_last")
    h, pos = torch.randn(2, 4, 12, dtype=F64), torch.randn(2, 4, 3, dtype=F64)
    phi = torch.rand(4, 4, 4, 2, dtype=F64) * (1 - torch.eye(4, dtype=F64))[:, :, None]
    expected = torch.zeros_like(h)
    for i in range(4):
        for j in range(4):
            if i != j:
                sh = conv.sh(pos[:, j] - pos[:, i])
                expected[:, i] += conv.tp(h[:, j], sh, phi[:, i, j].T @ conv.weight)
    torch.testing.assert_close(conv(h, pos, phi), expected)


def test_custom_autograd_functions_pass_gradcheck():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(2, 3, 4, 4, 5, generator=g, dtype=F64, requires_grad=True)
    cols = torch.randn(3, 2, 4, 5, generator=g, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(_NeighbourSum.apply, (w, cols))
    a = torch.randn(6, 3, 4, generator=g, dtype=F64, requires_grad=True)
    b = torch.randn(6, 4, 2, generator=g, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(_SmallBmm.apply, (a, b))


@pytest.mark.parametrize("kernel", ["batch_last", "factorised"])
def test_gradcheck_with_respect_to_positions_and_score(kernel):
    net = _net(3, 3, channels=2, n_layers=1, kernel=kernel, score_input=True)
    t, x, s = _inputs(3, 3, batch=2)
    x.requires_grad_(True)
    s.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x, s: net(t, x, score=s), (x, s))


@pytest.mark.parametrize("score", [False, True])
def test_one_step_trains_every_parameter_and_keeps_symmetry(score):
    torch.manual_seed(0)
    net = _build(4, 2, score_input=score)
    t, x, s = _inputs(4, 2)
    kwargs = {"score": s} if score else {}
    _one_adam_step(net, t, x, **kwargs)
    assert net(t, x, **kwargs).abs().max() > 1e-3
    net(t, x, **kwargs).pow(2).sum().backward()
    for name, param in net.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name
    with torch.no_grad():
        _assert_symmetric(net, 4, 2, score)


def test_float32_and_float64():
    for dtype in (torch.float32, F64):
        net = _net(4, 3).to(dtype)
        t, x, _ = (y.to(dtype) for y in _inputs(4, 3))
        assert net(t, x).dtype == dtype


def test_time_broadcasting_and_dependence():
    net = _net(4, 2)
    _, x, _ = _inputs(4, 2)
    full = net(torch.full((3,), 0.3, dtype=F64), x)
    torch.testing.assert_close(net(0.3, x), full)
    torch.testing.assert_close(net(torch.full((3, 1), 0.3, dtype=F64), x), full)
    assert not torch.allclose(net(0.1, x), net(0.9, x)), "output does not depend on time"


def test_bad_inputs_raise_clear_errors():
    net = E3NNControl(4, 2, channels=2, n_layers=1)
    t, x, s = (y.float() for y in _inputs(4, 2))
    with pytest.raises(ShapeError, match=r"\(B, 8\)"):
        net(t, x[:, :6])
    with pytest.raises(ShapeError, match="t must be"):
        net(t[:2], x)
    with pytest.raises(ConfigError, match="score_input"):
        net(t, x, score=s)
    scored = E3NNControl(4, 2, channels=2, n_layers=1, score_input=True)
    with pytest.raises(ConfigError, match="score=s"):
        scored(t, x)
    with pytest.raises(ShapeError, match="score"):
        scored(t, x, score=s[:, :4])
    with pytest.raises(ConfigError, match="spatial_dim"):
        E3NNControl(4, 1)
    with pytest.raises(ConfigError, match="kernel"):
        E3NNControl(4, 2, kernel="fast")
    with pytest.raises(ConfigError, match="lmax = 1"):
        E3NNControl(4, 2, lmax=2, kernel="batch_last")


def test_pickles_like_a_module():
    net = _net(4, 2, compile=True)  # never called: the compiled function is not stored
    net.compile = False
    t, x, _ = _inputs(4, 2)
    buffer = io.BytesIO()
    torch.save(net, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    torch.testing.assert_close(loaded(t, x), net(t, x))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("kernel", ["batch_last", "factorised"])
def test_cuda_matches_cpu(kernel):
    net = _net(5, 3, kernel=kernel, score_input=True)
    t, x, s = _inputs(5, 3)
    expected = net(t, x, score=s)
    out = net.cuda()(t.cuda(), x.cuda(), score=s.cuda())
    assert out.device.type == "cuda"
    torch.testing.assert_close(out.cpu(), expected)


@pytest.mark.slow
def test_torch_compile_gives_the_same_control():
    net = _net(4, 2)
    t, x, _ = _inputs(4, 2)
    compiled = _net(4, 2, compile=True)
    torch.testing.assert_close(compiled(t, x), net(t, x))


@pytest.mark.parametrize("name", ["mlp", "e3nn_dw4", "e3nn_lj13", "e3nn_lj55", "egnn"])
def test_net_configs_instantiate_to_a_zero_control(name):
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    root = Path(__file__).resolve().parents[2]
    system = {"e3nn_lj13": (13, 3), "e3nn_lj55": (55, 3)}.get(name, (4, 2))
    cfg = OmegaConf.load(root / "configs" / "net" / f"{name}.yaml")
    if name == "mlp":
        net = instantiate(cfg)(dim=system[0] * system[1])
    else:
        net = instantiate(cfg)(n_particles=system[0], spatial_dim=system[1])
    x = torch.randn(2, system[0] * system[1])
    assert torch.equal(net(torch.rand(2), x), torch.zeros_like(x))
