"""The shared sampler interface, checked on PIS, DDS and DIS.

Targets have known normalising constants; statistical checks use the estimators' own
standard errors (and ask those to be small, so that the tests can fail).
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import torch
from methods_testlib import HarmonicCluster, ShiftedMixture
from torch import nn

from physsample.errors import ConfigError
from physsample.methods import DDS, DIS, LRDS, PIS, DiffusionSampler, SamplerFileError
from physsample.nets import FourierMLP
from physsample.samples import Samples
from physsample.systems.gaussian_mixture import GaussianMixture

METHODS = {"pis": PIS, "dds": DDS, "dis": DIS}
FAST = dict(device="cpu", progress=False, hidden=32, n_layers=2)


class HalfPlane(GaussianMixture):
    """A standard Gaussian cut to x_0 < 1 (energy +inf beyond): some log w are -inf."""

    name = "half_plane"

    def __init__(self) -> None:
        super().__init__(torch.zeros(1, 2), 1.0)

    def _energy(self, x):
        energy = super()._energy(x)
        return torch.where(x[:, 0] < 1.0, energy, torch.full_like(energy, math.inf))


def wrong_proportion_data() -> torch.Tensor:
    """Draws from the two components of ShiftedMixture, half each (for LRDS)."""
    g = torch.Generator().manual_seed(0)
    target = ShiftedMixture()
    eps = torch.randn(400, 2, generator=g, dtype=torch.float64)
    half = torch.arange(400) < 200
    means = torch.where(half[:, None], target.means[0], target.means[1])
    std = torch.where(half[:, None], target.variances[0], target.variances[1]).sqrt()
    return means + std * eps


def random_net(dim: int, seed: int) -> FourierMLP:
    """A FourierMLP whose last layer is random, so that the control is not zero."""
    torch.manual_seed(seed)
    net = FourierMLP(dim, hidden=32, n_layers=2)
    last = net.body[-1]
    nn.init.normal_(last.weight, std=0.3)
    nn.init.normal_(last.bias, std=0.3)
    return net


def mean_weight(samples: Samples, log_z: float) -> tuple[float, float]:
    """Mean of w / Z and its standard error."""
    w = torch.exp(samples.log_weights.double() - log_z)
    return float(w.mean()), float(w.std() / math.sqrt(len(w)))


def log_variance(sampler: DiffusionSampler, n: int = 4000, seed: int = 5) -> float:
    """Var(log w) on n fresh trajectories (common random numbers across calls)."""
    return float(sampler.sample(n, generator=seed).log_weights.double().var())


@pytest.mark.parametrize("name", list(METHODS))
def test_weights_are_unbiased_with_a_random_network(name):
    target = ShiftedMixture()
    sampler = METHODS[name](target, n_steps=10, sigma=1.5, net=random_net(2, seed=1), **FAST)
    out = sampler.sample(20_000, generator=torch.Generator().manual_seed(11))
    mean, se = mean_weight(out, target.log_z)
    assert se < 0.03, f"standard error {se:.3f} too large for the test to have power"
    assert abs(mean - 1.0) < 4 * se, f"mean w / Z = {mean:.4f} +- {se:.4f}"
    assert out.x.shape == (20_000, 2) and out.log_weights.shape == (20_000,)
    meta = out.metadata
    assert meta["method"] == name and meta["n_steps"] == 10 and meta["energy_evaluations"] == 20_000
    assert meta["settings"]["sigma"] == 1.5 and meta["log_z_exact"] == pytest.approx(1.7)
    assert abs(meta["log_z"] - target.log_z) < 5 * se
    assert 0.0 < meta["ess"] <= 1.0 and meta["wall_time"] > 0


@pytest.mark.parametrize("name", list(METHODS))
def test_particle_samples_are_com_free_and_weights_unbiased(name):
    target = HarmonicCluster()
    sampler = METHODS[name](target, n_steps=8, net=random_net(6, seed=2), **FAST)
    out = sampler.sample(20_000, generator=7)
    centre = target.as_particles(out.x).mean(dim=1)
    assert float(centre.abs().max()) < 1e-5
    mean, se = mean_weight(out, target.log_z)
    assert se < 0.03
    assert abs(mean - 1.0) < 4 * se, f"mean w / Z = {mean:.4f} +- {se:.4f}"


@pytest.mark.parametrize("name", list(METHODS))
def test_a_few_lv_steps_lower_the_log_variance(name):
    sampler = METHODS[name](
        ShiftedMixture(), n_steps=20, sigma=1.5, lr=1e-2, ema_decay=None, **FAST
    )
    before = log_variance(sampler)
    sampler.fit(30)
    after = log_variance(sampler)
    assert after < 0.5 * before, f"Var(log w) {before:.3f} -> {after:.3f}"
    assert sampler.trainer.step == 30 and len(sampler.trainer.history) == 30


@pytest.mark.parametrize(
    "options",
    [
        {"chunk": None},
        {"chunk": 3, "n_grad_steps": 6},
        {"reuse": 3, "checkpoint_every": 3},
        {"exploration": 1.3},
        {"loss": "kl"},
        {"integrator": "euler_maruyama", "grid": "cosine"},
    ],
    ids=["one-graph", "random-steps", "reuse", "exploration", "kl", "em-cosine"],
)
def test_every_gradient_option_trains(options):
    sampler = DIS(
        ShiftedMixture(), n_steps=20, sigma=1.5, lr=1e-2, ema_decay=None, **FAST, **options
    )
    before = log_variance(sampler)
    sampler.fit(30)
    assert log_variance(sampler) < 0.6 * before
    rows = sampler.trainer.history
    assert all(row["skipped"] == 0 and row["n_dropped"] == 0 for row in rows)
    if options.get("exploration", 1.0) == 1.0:
        assert all(0 < row["ess"] <= 1 for row in rows)


def test_reuse_evaluates_the_energy_once_per_batch():
    sampler = DIS(ShiftedMixture(), n_steps=5, reuse=4, checkpoint_every=4, **FAST)
    sampler.fit(8)
    assert int(sampler.model.energy_evaluations) == 2 * sampler.batch_size
    meta = sampler.sample(10, generator=0).metadata
    assert meta["training_energy_evaluations"] == 2 * sampler.batch_size
    assert meta["training_steps"] == 8


def test_dropped_trajectories_are_counted_and_logged(tmp_path):
    log = tmp_path / "train.csv"
    sampler = PIS(HalfPlane(), n_steps=5, sigma=1.5, log_csv=log, **FAST)
    sampler.fit(3)
    rows = sampler.trainer.history
    assert all(row["n_dropped"] > 0 and row["n_nonfinite"] == row["n_dropped"] for row in rows)
    assert all(row["n_used"] + row["n_dropped"] == sampler.batch_size for row in rows)
    assert all(row["skipped"] == 0 and math.isfinite(row["loss"]) for row in rows)
    with open(log, newline="") as file:
        logged = list(csv.DictReader(file))
    assert [float(r["n_dropped"]) for r in logged] == [r["n_dropped"] for r in rows]


def test_log_z_returns_floats():
    sampler = DDS(ShiftedMixture(), n_steps=5, sigma=1.5, **FAST)
    est = sampler.log_z(2000, generator=0)
    assert all(isinstance(v, float) for v in est)
    assert est.elbo <= est.log_z and 0 < est.ess <= 1


def test_save_load_gives_identical_samples(tmp_path):
    sampler = DDS(ShiftedMixture(), n_steps=10, sigma=1.5, lr=1e-2, **FAST).fit(5)
    path = sampler.save(tmp_path / "dds.pt")
    for loader in (DDS, DiffusionSampler):
        loaded = loader.load(path, system=ShiftedMixture(), progress=False)
        assert type(loaded) is DDS and loaded.trainer.step == 5
        assert loaded.settings == sampler.settings
        a = sampler.sample(200, generator=torch.Generator().manual_seed(3))
        b = loaded.sample(200, generator=torch.Generator().manual_seed(3))
        torch.testing.assert_close(a.x, b.x, rtol=0, atol=0)
        torch.testing.assert_close(a.log_weights, b.log_weights, rtol=0, atol=0)
    with pytest.raises(SamplerFileError, match="holds a DDS"):
        PIS.load(path, system=ShiftedMixture())
    with pytest.raises(SamplerFileError):
        DDS.load(path, system=HarmonicCluster())


def test_loaded_sampler_keeps_training(tmp_path):
    options = dict(n_steps=5, lr=1e-2, lr_schedule="constant", **FAST)
    straight = DIS(ShiftedMixture(), **options).fit(6)
    first = DIS(ShiftedMixture(), **options).fit(3)
    resumed = DIS.load(first.save(tmp_path / "dis.pt"), system=ShiftedMixture()).fit(6)
    for p, q in zip(straight.net.parameters(), resumed.net.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=0)


def test_resume_from_checkpoint_continues_exactly(tmp_path):
    options = dict(n_steps=5, lr=1e-2, lr_schedule="constant", reuse=2, checkpoint_every=4, **FAST)
    straight = DIS(ShiftedMixture(), **options).fit(12)
    folder = tmp_path / "checkpoints"
    DIS(ShiftedMixture(), checkpoint_dir=folder, log_csv=tmp_path / "log.csv", **options).fit(8)
    resumed = DIS(ShiftedMixture(), checkpoint_dir=folder, log_csv=tmp_path / "log.csv", **options)
    resumed.fit(12)
    assert [row["step"] for row in resumed.trainer.history] == [8, 9, 10, 11]
    for p, q in zip(straight.net.parameters(), resumed.net.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=0)
    assert int(resumed.model.energy_evaluations) == int(straight.model.energy_evaluations)
    with open(tmp_path / "log.csv", newline="") as file:
        assert [int(r["step"]) for r in csv.DictReader(file)] == list(range(12))


@pytest.mark.parametrize(
    "options, message",
    [
        ({"loss": "l2"}, "loss"),
        ({"grid": "log"}, "grid"),
        ({"net": "transformer"}, "net"),
        ({"n_grad_steps": 3, "chunk": None}, "n_grad_steps"),
        ({"reuse": 3}, "multiple of reuse"),
        ({"loss": "kl", "exploration": 1.5}, "log-variance"),
        ({"batch_size": 1}, "batch_size"),
        ({"dtype": "int32"}, "dtype"),
    ],
)
def test_bad_options_fail_with_a_clear_message(options, message):
    with pytest.raises(ConfigError, match=message):
        DIS(ShiftedMixture(), **{**FAST, **options})


def test_any_module_can_be_the_network():
    class Linear(nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(torch.zeros(()))

        def forward(self, t, x):
            return self.weight * x

    sampler = PIS(ShiftedMixture(), n_steps=5, net=Linear(), lr=0.05, **FAST).fit(3)
    assert float(sampler.net.weight.detach()) != 0.0
    assert sampler.settings["net"] == "Linear"


def test_lrds_is_exported():
    assert issubclass(LRDS, DiffusionSampler)


@pytest.mark.parametrize("name", ["pis", "dds", "dis", "lrds"])
def test_method_and_train_configs_instantiate(name):
    """The way the entry point builds a sampler from configs/method and configs/train."""
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    configs = Path(__file__).resolve().parents[2] / "configs"
    with initialize_config_dir(config_dir=str(configs), version_base="1.3"):
        overrides = [f"method={name}", "train=default", "method.n_steps=5"]
        cfg = compose("config", overrides=overrides)
    train = OmegaConf.to_container(cfg.train, resolve=True)
    steps, n_samples = train.pop("steps"), train.pop("n_samples")
    batch = train.pop("sample_batch_size")
    assert steps > 0 and n_samples > 0
    extra = {"reference": wrong_proportion_data()} if name == "lrds" else {}
    train.update(progress=False, batch_size=16)
    sampler = instantiate(cfg.method)(ShiftedMixture(), **train, device="cpu", seed=0, **extra)
    assert type(sampler).method_name == name
    out = sampler.fit(1).sample(10, generator=0, batch_size=batch)
    assert out.metadata["settings"]["n_steps"] == 5
