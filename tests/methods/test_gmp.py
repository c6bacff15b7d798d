"""GMP: learned Gaussian-mixture prior, learned horizon, iterative model refinement.

Weights are checked against known normalising constants within 4 standard errors of
the mean (and the standard error must be small, so that a bias would be caught);
gradients against central finite differences in float64.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import torch
from methods_testlib import HarmonicCluster, ShiftedMixture
from omegaconf import OmegaConf
from torch import nn

from physsample.analysis import emc
from physsample.diffusion import log_variance_loss
from physsample.errors import ConfigError
from physsample.methods import DIS, GMP, DiffusionSampler
from physsample.nets import FourierMLP
from physsample.samples import Samples
from physsample.systems.gaussian_mixture import GaussianMixture

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
FAST = dict(device="cpu", progress=False, hidden=32, n_layers=2)
F64 = dict(dtype="float64", ema_decay=None)


FOUR_MODES = torch.tensor([[-6.0, -6.0], [6.0, -6.0], [-6.0, 6.0], [6.0, 6.0]])


def four_modes() -> GaussianMixture:
    """Four modes of std 0.71 at distance 8.5 from the origin: N(0, 1) covers none."""
    return GaussianMixture(FOUR_MODES, 0.5)


def random_net(dim: int, seed: int) -> FourierMLP:
    """A FourierMLP whose last layer is random, so that the control is not zero."""
    torch.manual_seed(seed)
    net = FourierMLP(dim, hidden=32, n_layers=2)
    nn.init.normal_(net.body[-1].weight, std=0.3)
    nn.init.normal_(net.body[-1].bias, std=0.3)
    return net


def randomise(sampler: GMP, seed: int, size: float = 0.03) -> None:
    """Random prior means, scales, weights and horizon (stored units x gain = 10)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in sampler.reference.parameters():
            p.add_(size * torch.randn(p.shape, generator=g, dtype=p.dtype))


def mean_weight(samples: Samples, log_z: float) -> tuple[float, float]:
    """Mean of w / Z and its standard error."""
    w = torch.exp(samples.log_weights.double() - log_z)
    return float(w.mean()), float(w.std() / math.sqrt(len(w)))


def check_unbiased(samples: Samples, log_z: float, max_se: float = 0.035) -> None:
    mean, se = mean_weight(samples, log_z)
    assert se < max_se, f"standard error {se:.3f} too large for the test to have power"
    assert abs(mean - 1.0) < 4 * se, f"mean w / Z = {mean:.4f} +- {se:.4f}"


# ----------------------------------------------------------------------------- exactness
def test_prior_density_and_draws_are_the_mixture():
    sampler = GMP(ShiftedMixture(), n_components=3, imr=False, **FAST, **F64)
    randomise(sampler, seed=3, size=0.05)
    prior = sampler.prior
    means, scales = prior.means().detach(), prior.scales().detach()
    weights = prior.log_weights().exp().detach()
    mixture = torch.distributions.MixtureSameFamily(
        torch.distributions.Categorical(weights),
        torch.distributions.Independent(torch.distributions.Normal(means, scales), 1),
    )
    x = torch.randn(50, 2, dtype=torch.float64) * 2
    torch.testing.assert_close(prior.log_prob(x), mixture.log_prob(x))
    draws, slots = prior.sample(40_000, torch.Generator().manual_seed(0), torch.float64)
    draws = draws.detach()
    counts = torch.bincount(slots, minlength=3).double() / 40_000
    torch.testing.assert_close(counts, weights, atol=4 * math.sqrt(0.25 / 40_000), rtol=0)
    for k in range(3):  # given the component, x = mu_k + sigma_k eps
        z = (draws[slots == k] - means[k]) / scales[k]
        assert float(z.mean(0).abs().max()) < 4 / math.sqrt(len(z))
        assert float((z.std(0) - 1).abs().max()) < 4 / math.sqrt(2 * len(z))


def test_one_component_at_the_dis_prior_is_dis():
    """The exponential GMP step with p_phi = N(0, sigma^2) is DIS's exact VP-OU step."""
    dis = DIS(ShiftedMixture(), n_steps=10, sigma=1.5, net=random_net(2, 1), **FAST, **F64)
    gmp = GMP(
        ShiftedMixture(), n_steps=10, sigma=1.5, net=random_net(2, 1), imr=False, **FAST, **F64
    )
    a, b = dis.sample(500, generator=3), gmp.sample(500, generator=3)
    torch.testing.assert_close(a.x, b.x, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(a.log_weights, b.log_weights, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("integrator", ["exponential", "euler_maruyama"])
def test_weights_are_unbiased_with_a_random_prior_and_control(integrator):
    target = ShiftedMixture()
    sampler = GMP(
        target, n_steps=10, sigma=1.5, n_components=3, imr=False, integrator=integrator,
        net=random_net(2, 1), **FAST, ema_decay=None,
    )  # fmt: skip
    randomise(sampler, seed=0)
    weights = sampler.prior.log_weights().exp().detach()
    assert float(weights.min()) > 0.15 and float(weights.max()) < 0.6  # a real mixture
    assert abs(sampler.horizon - 1.0) > 0.05  # a learned, not the nominal, horizon
    out = sampler.sample(20_000, generator=11)
    check_unbiased(out, target.log_z)
    assert out.metadata["method"] == "gmp" and out.metadata["prior"]["n_active"] == 3


def test_particle_prior_is_symmetric_com_free_and_unbiased():
    target = HarmonicCluster()
    sampler = GMP(
        target, n_steps=8, n_components=2, imr=False, net=random_net(6, 2), **FAST,
        ema_decay=None,
    )  # fmt: skip
    with torch.no_grad():  # two different scales
        sampler.prior.raw_scales.copy_(torch.tensor([[0.04], [-0.05]], dtype=torch.float64))
    assert not sampler.prior.raw_means.requires_grad  # centred at the origin
    out = sampler.sample(20_000, generator=7)
    assert float(target.as_particles(out.x).mean(dim=1).abs().max()) < 1e-5
    check_unbiased(out, target.log_z)
    # the prior density is invariant under permutation and rotation of the particles
    x = target.remove_com(torch.randn(5, 6, dtype=torch.float64))
    p = target.as_particles(x)
    c, s = math.cos(0.7), math.sin(0.7)
    turned = (p[:, [2, 0, 1]] @ torch.tensor([[c, -s], [s, c]], dtype=torch.float64)).flatten(1)
    prior = sampler.prior
    torch.testing.assert_close(prior.log_prob(turned), prior.log_prob(x))


@pytest.mark.parametrize("chunk, integrator", [(None, "exponential"), (3, "euler_maruyama")])
def test_log_variance_gradient_matches_finite_differences(chunk, integrator):
    """Through the network, the prior (means, scales, weights) and the horizon."""
    target = ShiftedMixture()
    sampler = GMP(
        target, n_steps=6, sigma=1.5, n_components=3, imr=False, net=random_net(2, 1),
        integrator=integrator, chunk=chunk, **FAST, **F64,
    )  # fmt: skip
    randomise(sampler, seed=1)
    with torch.no_grad():
        out = sampler._rollout(sampler.model, torch.Generator().manual_seed(1))
    final = target.log_prob(out.samples)
    params = [p for p in sampler.model.parameters() if p.requires_grad]
    assert any(p is sampler.reference.raw_horizon for p in params)

    def loss():
        log_w = sampler._path_log_weights(sampler.model, out.states, final, None, None)
        return log_variance_loss(log_w)[0]

    grads = torch.autograd.grad(loss(), params)
    g = torch.Generator().manual_seed(2)
    direction = [torch.randn(p.shape, generator=g, dtype=p.dtype) for p in params]
    eps = 1e-6
    values = []
    with torch.no_grad():
        for sign in (1.0, -2.0, 1.0):
            for p, d in zip(params, direction, strict=True):
                p.add_(sign * eps * d)
            values.append(float(loss()))
    numeric = (values[0] - values[1]) / (2 * eps)
    analytic = float(sum((gr * d).sum() for gr, d in zip(grads, direction, strict=True)))
    assert analytic == pytest.approx(numeric, rel=1e-5)
    prior_grads = [gr for gr, p in zip(grads, params, strict=True) if p in set(
        sampler.reference.parameters())]  # fmt: skip
    assert len(prior_grads) == 4 and all(float(gr.abs().sum()) > 0 for gr in prior_grads)


# ----------------------------------------------------------------------------- training
@pytest.mark.parametrize("options", [{}, {"loss": "kl"}, {"chunk": 3, "n_grad_steps": 6}])
def test_training_lowers_the_log_variance(options):
    sampler = GMP(
        ShiftedMixture(), n_steps=10, sigma=1.5, n_components=2, imr=False, lr=1e-2,
        ema_decay=None, batch_size=128, **FAST, **options,
    )  # fmt: skip
    before = float(sampler.sample(4000, generator=5).log_weights.double().var())
    sampler.fit(25)
    after = float(sampler.sample(4000, generator=5).log_weights.double().var())
    assert after < 0.5 * before, f"Var(log w) {before:.3f} -> {after:.3f}"
    assert all(row["skipped"] == 0 for row in sampler.trainer.history)


def test_prior_moves_to_the_moments_of_a_gaussian_target():
    mean, std = torch.tensor([2.0, -1.0]), torch.tensor([0.5, 2.0])
    target = GaussianMixture(mean[None], (std**2)[None])
    sampler = GMP(
        target, n_steps=10, batch_size=128, imr=False, prior_lr=5e-2, ema_decay=None, **FAST
    )
    sampler.fit(100)
    learned_mean = sampler.prior.means()[0].detach().float()
    learned_std = sampler.prior.scales()[0].detach().float()
    # from N(0, 1) to the target's mean and standard deviations
    torch.testing.assert_close(learned_mean, mean, atol=0.15, rtol=0)
    torch.testing.assert_close(learned_std, std, atol=0, rtol=0.1)
    assert sampler.horizon != 1.0
    assert sampler.sample(4000, generator=0).metadata["ess"] > 0.9


def imr_run(imr: bool, seed: int) -> tuple[GMP, Samples]:
    sampler = GMP(
        four_modes(), n_steps=10, batch_size=128, imr=imr, imr_every=10, max_components=5,
        seed=seed, **FAST,
    )  # fmt: skip
    sampler.fit(60)
    return sampler, sampler.sample(2000, generator=1)


def test_imr_adds_components_at_uncovered_modes_and_raises_mode_coverage():
    without, out_without = imr_run(imr=False, seed=0)
    sampler, out = imr_run(imr=True, seed=0)
    prior = sampler.prior
    assert without.prior.n_active == 1 and prior.n_active == 5
    assert prior.added_at[prior.active].tolist() == [0, 10, 20, 30, 40]
    assert [entry["step"] for entry in sampler.imr_history] == [10, 20, 30, 40]
    means = prior.means()[prior.active].detach().float()
    # every mode has a component within one target std (0.71) of it
    distance = torch.cdist(FOUR_MODES, means).min(dim=1).values
    assert float(distance.max()) < 0.71, distance
    scales = prior.active_scales()[1:]  # the Laplace scale of a mode is its std, 0.71
    assert float(scales.min()) > 0.4 and float(scales.max()) < 1.0, scales
    g = torch.Generator().manual_seed(0)
    coverage = emc(out.resample(2000, generator=g).x, FOUR_MODES)
    coverage_without = emc(out_without.resample(2000, generator=g).x, FOUR_MODES)
    assert coverage > 0.95 and coverage_without < 0.75, (coverage, coverage_without)
    assert abs(out.metadata["log_z"]) < 0.1 and out.metadata["ess"] > 0.5
    assert out.metadata["training_energy_evaluations"] > 60 * sampler.batch_size  # MALA counted


def test_refinement_on_a_particle_system_adds_an_isotropic_centred_component():
    target = HarmonicCluster()
    sampler = GMP(target, n_steps=5, batch_size=32, imr_every=2, max_components=2, **FAST)
    new = sampler.refine()
    prior = sampler.prior
    assert prior.n_active == 2 and new.scale.shape == (1,)
    radius = float(new.candidate.norm()) / math.sqrt(4)
    assert float(prior.active_scales()[1, 0]) == pytest.approx(radius, rel=1e-6)
    assert float(prior.means().abs().max()) == 0.0
    assert sampler.refine() is None  # every slot in use
    out = sampler.sample(100, generator=0)
    assert float(target.as_particles(out.x).mean(dim=1).abs().max()) < 1e-5


# ------------------------------------------------------------------------ persistence
def test_save_load_keeps_the_refined_prior(tmp_path):
    sampler = GMP(four_modes(), n_steps=5, batch_size=32, imr_every=2, max_components=3, **FAST)
    sampler.fit(5)
    assert sampler.prior.n_active == 3
    path = sampler.save(tmp_path / "gmp.pt")
    for loader in (GMP, DiffusionSampler):
        loaded = loader.load(path, system=four_modes(), progress=False)
        assert type(loaded) is GMP and loaded.prior.n_active == 3
        assert loaded.method_settings == sampler.method_settings
        a = sampler.sample(200, generator=3)
        b = loaded.sample(200, generator=3)
        torch.testing.assert_close(a.x, b.x, rtol=0, atol=0)
        torch.testing.assert_close(a.log_weights, b.log_weights, rtol=0, atol=0)


def test_resume_from_checkpoint_continues_exactly_across_refinements(tmp_path):
    options = dict(
        n_steps=5, batch_size=32, lr_schedule="constant", imr_every=5, max_components=4,
        checkpoint_every=4, **FAST,
    )  # fmt: skip
    straight = GMP(four_modes(), **options).fit(12)
    folder, log = tmp_path / "checkpoints", tmp_path / "log.csv"
    GMP(four_modes(), checkpoint_dir=folder, log_csv=log, **options).fit(8)
    resumed = GMP(four_modes(), checkpoint_dir=folder, log_csv=log, **options)
    resumed.fit(12)
    assert [row["step"] for row in resumed.trainer.history] == [8, 9, 10, 11]
    assert straight.prior.n_active == resumed.prior.n_active == 3  # added at 5 and at 10
    for p, q in zip(straight.model.parameters(), resumed.model.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=0)
    for a, b in zip(straight.trainer.ema, resumed.trainer.ema, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert int(resumed.model.energy_evaluations) == int(straight.model.energy_evaluations)
    with open(log, newline="") as file:
        assert [int(r["step"]) for r in csv.DictReader(file)] == list(range(12))


# ----------------------------------------------------------------------------- configs
def test_method_and_train_configs_build_a_gmp():
    """The way the entry point builds a sampler from configs/method and configs/train."""
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        overrides = ["method=gmp", "train=default", "method.n_steps=5", "method.imr_every=1"]
        cfg = compose("config", overrides=overrides)
    assert cfg.method._target_ == "physsample.methods.GMP" and cfg.method._partial_
    train = OmegaConf.to_container(cfg.train, resolve=True)
    for key in ("steps", "n_samples", "sample_batch_size"):
        train.pop(key)
    train.update(progress=False, batch_size=16)
    sampler = instantiate(cfg.method)(ShiftedMixture(), **train, device="cpu", seed=0)
    assert isinstance(sampler, GMP) and sampler.prior.max_components == 10
    out = sampler.fit(2).sample(10, generator=0)
    assert out.metadata["method"] == "gmp" and out.metadata["prior"]["n_active"] == 2


@pytest.mark.parametrize(
    "options",
    [
        {"n_components": 0},
        {"n_components": 3, "max_components": 2},
        {"imr_every": 0},
        {"prior_lr": 0.0},
        {"integrator": "heun"},
        {"beta_min": 2.0, "beta_max": 1.0},
    ],
)
def test_invalid_settings_are_refused(options):
    with pytest.raises(ConfigError):
        GMP(ShiftedMixture(), **FAST, **options)
