"""The score-network (diffusion-model) reference of LRDS.

Checks, on data with a closed-form noised score (physsample.diffusion.GMM with
``scale`` / ``extra_var``):

- the DSM-trained score matches the exact noised score in the lambda = c_t weighted
  mean-squared sense, R = E[c_t |s - s*|^2] / E[c_t |s*|^2] over t ~ U[0, T) and
  x ~ p_t, below ``TOL``; the untrained network (the moment-matched Gaussian) and
  the trained one evaluated at the reversed time T - t both fail that bound;
- the path weights stay exact importance weights with this reference (E[w] = Z);
- the untrained sampler on it has a far higher ESS than on the plain Gaussian reference;
- CoM-free particle spaces, importance-weighted data, frozen parameters, CUDA.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from physsample import Samples
from physsample import diffusion as D
from physsample.errors import ConfigError, ShapeError
from physsample.methods.score_reference import ScoreNetworkReference
from physsample.nets import FourierMLP

F64 = torch.float64
SCHEDULE = D.LinearVPSchedule(0.1, 10.0)
TOL = 0.02  # relative weighted MSE; trained nets reach ~0.003, the controls ~0.2 and more
LOG_Z = 1.3


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models run faster, and reproducibly, on one thread (the fits are module-wide)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


MEANS = torch.tensor([[-2.0, 0.5], [1.5, -1.0]], dtype=F64)
COVS = torch.tensor([[[0.3, 0.1], [0.1, 0.2]], [[0.5, -0.2], [-0.2, 0.4]]], dtype=F64)


def two_modes(weights=(0.3, 0.7)) -> D.GMM:
    """A 2-D two-component mixture with correlated, unequal components."""
    return D.GMM.from_covariances(MEANS, COVS, torch.tensor(weights, dtype=F64))


def one_gaussian() -> D.GMM:
    return D.GMM.from_covariances(
        torch.tensor([[1.5]], dtype=F64), torch.tensor([[0.49]], dtype=F64)
    )


def fit(data, steps, hidden, **kwargs) -> ScoreNetworkReference:
    dim = data.shape[1] if isinstance(data, torch.Tensor) else data.dim
    net = FourierMLP(dim, hidden=hidden, n_layers=2)
    return ScoreNetworkReference.fit(data, SCHEDULE, net=net, steps=steps, lr=3e-3, **kwargs)


def relative_error(score_fn, gmm: D.GMM, n: int = 20_000, seed: int = 1) -> float:
    """E[c_t |s(t, x) - s*(t, x)|^2] / E[c_t |s*|^2], t ~ U[0, T), x ~ p_t (exact draws)."""
    g = torch.Generator().manual_seed(seed)
    x_target = gmm.sample(n, g, dtype=F64)
    t = torch.rand(n, generator=g, dtype=F64) * SCHEDULE.horizon
    a, c = SCHEDULE.noising(torch.full_like(t, SCHEDULE.horizon), t)
    x = a[:, None] * x_target + c.sqrt()[:, None] * torch.randn(
        x_target.shape, generator=g, dtype=F64
    )
    exact = gmm.score(x, a, c)
    with torch.no_grad():
        diff = score_fn(t, x) - exact
    return float((c * (diff**2).sum(1)).mean() / (c * (exact**2).sum(1)).mean())


@pytest.fixture(scope="module")
def mixture_reference() -> ScoreNetworkReference:
    data = two_modes().sample(4000, torch.Generator().manual_seed(0), dtype=F64)
    return fit(data, steps=1000, hidden=64)


def untrained_copy(reference: ScoreNetworkReference) -> ScoreNetworkReference:
    net = FourierMLP(reference.dim, hidden=64, n_layers=2)  # zero last layer
    return ScoreNetworkReference(
        reference.schedule, reference.space, net, reference.data_mean, float(reference.data_var)
    )


def reversed_time(reference):
    return lambda t, x: reference.score(SCHEDULE.horizon - t, x)


# -- the score ------------------------------------------------------------------------
def test_trained_score_matches_the_exact_noised_mixture_score(mixture_reference):
    gmm = two_modes()
    assert relative_error(mixture_reference.score, gmm) < TOL
    # controls: the untrained net (moment-matched Gaussian) and the wrong time convention
    assert relative_error(untrained_copy(mixture_reference).score, gmm) > 5 * TOL
    assert relative_error(reversed_time(mixture_reference), gmm) > 5 * TOL


def test_trained_score_matches_a_one_dimensional_gaussian():
    gmm = one_gaussian()
    reference = fit(gmm.sample(2000, torch.Generator().manual_seed(0), dtype=F64), 400, 32)
    assert relative_error(reference.score, gmm) < TOL
    assert relative_error(reversed_time(reference), gmm) > 5 * TOL
    assert reference.data_mean.item() == pytest.approx(1.5, abs=0.05)
    assert reference.data_var.item() == pytest.approx(0.49, rel=0.1)


def test_importance_weights_of_samples_are_honoured():
    """Equal numbers from each mode, weighted to 0.1 / 0.9: the fit follows the weights."""
    g = torch.Generator().manual_seed(4)
    modes = [D.GMM.from_covariances(MEANS[k : k + 1], COVS[k : k + 1]) for k in range(2)]
    x = torch.cat([mode.sample(2000, g, dtype=F64) for mode in modes])
    log_w = torch.cat([torch.full((2000,), math.log(w / 0.5), dtype=F64) for w in (0.1, 0.9)])
    reference = fit(Samples(x, log_weights=log_w), steps=1000, hidden=64)
    assert relative_error(reference.score, two_modes((0.1, 0.9))) < TOL  # measured 0.002
    assert relative_error(reference.score, two_modes((0.5, 0.5))) > 2.5 * TOL  # measured 0.10


def test_score_and_base_control_at_the_prior_end():
    """Zero net: the score of N(a m, a^2 s^2 + c); base_control = score + x / sigma^2."""
    space = D.GaussianSpace(2)
    ref = ScoreNetworkReference(SCHEDULE, space, FourierMLP(2, hidden=8), torch.ones(2), 0.5)
    x = torch.randn(5, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    t = torch.zeros(5, dtype=F64)
    a, c = ref.marginal(t)
    expected = -(x - a[:, None]) / (0.5 * a[:, None] ** 2 + c[:, None])
    torch.testing.assert_close(ref.score(t, x), expected)
    torch.testing.assert_close(ref.base_control(t, x), expected + x)
    assert ref.score(t, x).dtype == F64  # a float32 net, float64 states


# -- the sampler built on it ----------------------------------------------------------
def _simulate(reference, control_net, n_steps, n, seed):
    target = two_modes()
    process = D.GenerativeProcess(reference, D.uniform_grid(n_steps), "exponential")
    with torch.no_grad():
        return D.simulate(
            process,
            D.residual_control(reference, control_net),
            lambda x: target.log_prob(x) + LOG_Z,
            n,
            generator=torch.Generator().manual_seed(seed),
            dtype=F64,
        )


class RandomControl(nn.Module):
    """A bounded random residual control scale * tanh([x, t] W)."""

    def __init__(self, dim: int, seed: int, scale: float = 1.0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.w = nn.Parameter(0.5 * torch.randn(dim + 1, dim, generator=g, dtype=F64))
        self.scale = scale

    def forward(self, t, x):
        return self.scale * torch.tanh(torch.cat([x, t[:, None]], dim=1) @ self.w)


def zero_control(t, x):
    return torch.zeros_like(x)


@pytest.mark.parametrize("control", ["zero", "random"])
def test_path_weights_are_unbiased_with_the_score_reference(mixture_reference, control):
    net = zero_control if control == "zero" else RandomControl(2, seed=1)
    n = 20_000
    out = _simulate(mixture_reference, net, n_steps=4, n=n, seed=3)
    w = torch.exp(out.log_weights - LOG_Z)
    mean, se = float(w.mean()), float(w.std() / math.sqrt(n))
    assert se < 0.035, f"standard error {se:.3f} too large for the test to have power"
    assert abs(mean - 1.0) < 4 * se, f"mean w / Z = {mean:.4f} +- {se:.4f}"


def test_untrained_sampler_on_the_score_reference_beats_the_gaussian_reference(
    mixture_reference,
):
    def ess(reference):
        out = _simulate(reference, zero_control, n_steps=50, n=4000, seed=5)
        return Samples(out.samples, log_weights=out.log_weights).ess() / 4000

    score_ess = ess(mixture_reference)
    gaussian_ess = ess(D.GaussianReference(SCHEDULE, D.GaussianSpace(2)))
    assert score_ess > 0.8, score_ess  # measured 0.90
    assert gaussian_ess < 0.2, gaussian_ess  # measured 0.10
    assert score_ess > 4 * gaussian_ess


def test_only_the_residual_control_gets_gradients(mixture_reference):
    assert all(not p.requires_grad for p in mixture_reference.parameters())
    residual = FourierMLP(2, hidden=8).double()
    out = _simulate(mixture_reference, zero_control, n_steps=5, n=64, seed=0)
    process = D.GenerativeProcess(mixture_reference, D.uniform_grid(5), "exponential")
    control = D.residual_control(mixture_reference, residual)
    log_w = D.log_weights_from_states(process, control, two_modes().log_prob, out.states)
    log_w.var().backward()
    assert all(p.grad is None for p in mixture_reference.parameters())
    assert residual.body[-1].weight.grad.abs().sum() > 0


# -- particle spaces, errors, devices ---------------------------------------------------
def test_com_free_space_weights_are_unbiased_and_stay_in_the_subspace():
    """Harmonic cluster: log pi = -(k n / 2) |x|^2 on the CoM-free space, Gaussian Z."""
    space = D.GaussianSpace(6, n_particles=3, spatial_dim=2)
    k, n = 1.0, 20_000
    std = 1.0 / math.sqrt(k * 3)
    data = std * space.noise(2000, torch.Generator().manual_seed(0), F64)
    data = data + torch.tensor([5.0, -3.0] * 3, dtype=F64)  # a translated copy: projected away
    reference = ScoreNetworkReference.fit(
        data, SCHEDULE, space, FourierMLP(6, hidden=16, n_layers=1), steps=200, lr=3e-3
    )
    assert float(reference.data_mean.abs().max()) == 0.0
    assert reference.data_var.item() == pytest.approx(std**2, rel=0.1)
    process = D.GenerativeProcess(reference, D.cosine_grid(6), "exponential")
    control = D.residual_control(reference, RandomControl(6, seed=2, scale=0.2))
    with torch.no_grad():
        out = D.simulate(
            process,
            control,
            lambda x: -0.5 * k * 3 * (x * x).sum(1),
            n,
            generator=torch.Generator().manual_seed(1),
            dtype=F64,
        )
    torch.testing.assert_close(space.project(out.states), out.states)
    log_z = 0.5 * space.effective_dim * math.log(2 * math.pi / (k * 3))
    w = torch.exp(out.log_weights - log_z)
    mean, se = float(w.mean()), float(w.std() / math.sqrt(n))
    assert se < 0.035 and abs(mean - 1.0) < 4 * se, f"{mean:.4f} +- {se:.4f}"
    score = reference.score(torch.rand(8, dtype=F64), out.samples[:8])
    torch.testing.assert_close(space.project(score), score)


def test_bad_inputs_are_rejected():
    space = D.GaussianSpace(2)
    with pytest.raises(ConfigError):
        ScoreNetworkReference(D.PinnedBrownianSchedule(), space, FourierMLP(2))
    with pytest.raises(ShapeError):
        ScoreNetworkReference.fit(torch.zeros(10, 3), SCHEDULE, space, steps=1)
    with pytest.raises(ConfigError):
        ScoreNetworkReference.fit(torch.full((10, 2), float("nan")), SCHEDULE, steps=1)
    with pytest.raises(NotImplementedError):
        ScoreNetworkReference(SCHEDULE, space, FourierMLP(2)).log_prob(
            torch.zeros(1), torch.zeros(1, 2)
        )


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_fit_and_sample_on_cuda():
    data = two_modes().sample(1000, torch.Generator().manual_seed(0), dtype=F64)
    reference = fit(data, steps=50, hidden=16, device="cuda")
    assert reference.device.type == "cuda"
    generator = torch.Generator(device="cuda").manual_seed(0)
    process = D.GenerativeProcess(reference, D.uniform_grid(5))
    with torch.no_grad():
        out = D.simulate(
            process,
            D.residual_control(reference, zero_control),
            lambda x: -(x * x).sum(1),
            10,
            generator=generator,
        )
    assert out.samples.device.type == "cuda" and bool(torch.isfinite(out.log_weights).all())
