"""LRDS: a reference fitted to (approximate) samples, corrected by path weights and training.

Mode proportions are compared with their delta-method standard errors from the
self-normalised weights, sqrt(sum_i w_i^2 (1_A(x_i) - p)^2); each test also asks the
standard error to be small, so that it has power.
"""

from __future__ import annotations

import math

import pytest
import torch
from methods_testlib import HarmonicCluster

import physsample as ps
from physsample import diffusion as D
from physsample.errors import ConfigError, ShapeError
from physsample.methods import LRDS, DiffusionSampler
from physsample.samples import Samples
from physsample.systems.gaussian_mixture import GaussianMixture

FAST = dict(device="cpu", progress=False)
F64 = torch.float64


def two_mode_target() -> GaussianMixture:
    """1-D mixture 0.8 N(-2, 0.5^2) + 0.2 N(2.5, 0.7^2) (log Z = 0)."""
    means = torch.tensor([[-2.0], [2.5]])
    return GaussianMixture(means, torch.tensor([0.25, 0.49]), torch.tensor([0.8, 0.2]))


def wrong_proportion_data(n_per_mode: int = 1000, seed: int = 0) -> torch.Tensor:
    """Exact draws within each mode, but half in each: MCMC that never crossed the barrier."""
    g = torch.Generator().manual_seed(seed)
    left = -2.0 + 0.5 * torch.randn(n_per_mode, 1, generator=g, dtype=F64)
    right = 2.5 + 0.7 * torch.randn(n_per_mode, 1, generator=g, dtype=F64)
    return torch.cat([left, right])


def weighted_fraction(samples: Samples, mask: torch.Tensor) -> tuple[float, float]:
    """Self-normalised weighted fraction of samples in ``mask`` and its standard error."""
    w, a = samples.weights().double(), mask.double()
    p = float((w * a).sum())
    return p, float(torch.sqrt((w * w * (a - p) ** 2).sum()))


def log_z_standard_error(samples: Samples) -> float:
    """Delta-method standard error of logsumexp(log w) - log n."""
    w = samples.weights().double()
    return float(torch.sqrt(((len(w) * w - 1) ** 2).sum()) / len(w))


def test_untrained_lrds_with_a_fitted_gmm_has_high_ess():
    system = ps.systems.get("gmm25")
    data = system.sample_exact(5000, torch.Generator().manual_seed(0))
    sampler = LRDS(system, reference=data, n_components=25, n_steps=100, **FAST)
    assert sampler.reference.gmm.n_components == 25
    assert not sampler.method_settings["reference"]["seeded_from_modes"]  # data given
    out = sampler.sample(4000, generator=1)
    assert out.metadata["ess"] > 0.8, out.metadata
    se = log_z_standard_error(out)
    assert se < 0.02 and abs(out.metadata["log_z"] - system.log_z) < 4 * se


def test_short_training_on_gmm25_gets_log_z_and_mode_weights():
    """MALA from the modes -> GMM -> 30 LV steps -> Delta log Z < 0.1, weights 1/25 each."""
    system = ps.systems.get("gmm25")
    sampler = LRDS(system, n_components=25, mcmc_steps=200, n_steps=50, lr=3e-3, **FAST)
    assert len(sampler.reference_samples) == 100 * 20  # 4 chains per mode, 200 / 10 kept
    # MALA ran from the modes, which seed the mixture fit: one component per mode (80
    # correlated samples per mode: the means are off by up to ~0.2; a merged pair by 2.5)
    assert sampler.method_settings["reference"]["seeded_from_modes"]
    nearest = torch.cdist(system.modes.double(), sampler.reference.gmm.means).min(dim=1)
    assert sorted(nearest.indices.tolist()) == list(range(25))
    assert float(nearest.values.max()) < 0.5
    untrained = sampler.log_z(4000, generator=2)
    sampler.fit(30)
    out = sampler.sample(10_000, generator=3)
    assert out.metadata["ess"] >= untrained.ess - 0.05
    assert abs(out.metadata["log_z"] - system.log_z) < 0.1
    assert log_z_standard_error(out) < 0.03
    nearest = torch.cdist(out.x.double(), system.modes.double()).argmin(dim=1)
    for k in range(25):
        p, se = weighted_fraction(out, nearest == k)
        assert se < 0.005
        assert abs(p - 1 / 25) < 4.5 * se, f"mode {k}: {p:.4f} +- {se:.4f}"


def test_weights_correct_the_mode_proportions_of_the_data_and_training_raises_ess():
    target = two_mode_target()
    sampler = LRDS(
        target, reference=wrong_proportion_data(), n_steps=50, hidden=32, lr=3e-3, **FAST
    )
    gmm = sampler.reference.gmm
    assert gmm.n_components == 2  # chosen by BIC
    torch.testing.assert_close(gmm.weights, torch.full((2,), 0.5, dtype=F64), atol=1e-3, rtol=0)

    before = sampler.sample(8000, generator=3)
    left = before.x[:, 0] < 0.25
    p, se = weighted_fraction(before, left)
    assert se < 0.01
    assert abs(p - 0.8) < 4 * se, f"weighted fraction {p:.4f} +- {se:.4f}"
    assert abs(float(left.double().mean()) - 0.5) < 0.03  # the samples themselves are 50/50

    sampler.fit(100)
    after = sampler.sample(8000, generator=3)
    assert after.metadata["ess"] > before.metadata["ess"] + 0.08
    assert float((after.x[:, 0] < 0.25).double().mean()) > 0.6  # the sampler moved mass
    p, se = weighted_fraction(after, after.x[:, 0] < 0.25)
    assert se < 0.01 and abs(p - 0.8) < 4 * se, f"weighted fraction {p:.4f} +- {se:.4f}"


def test_weighted_samples_are_resampled_before_the_fit():
    target = two_mode_target()
    data = wrong_proportion_data(2000)
    log_w = torch.where(data[:, 0] < 0.25, math.log(0.8), math.log(0.2)).double()
    sampler = LRDS(target, reference=Samples(data, log_w), n_components=2, **FAST)
    weights = sampler.reference.gmm.weights.sort().values
    torch.testing.assert_close(weights, torch.tensor([0.2, 0.8], dtype=F64), atol=0.03, rtol=0)


class DelegatingReference:
    """Not a Reference subclass, only the interface: LRDS must accept it (e.g. a DSM net)."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.schedule, self.space = inner.schedule, inner.space

    def sample_prior(self, *args, **kwargs):
        return self.inner.sample_prior(*args, **kwargs)

    def prior_log_prob(self, x):
        return self.inner.prior_log_prob(x)

    def base_control(self, t, x):
        return self.inner.base_control(t, x)

    @property
    def prior_is_delta(self):
        return False

    def parameters(self):
        return iter(())


def test_given_references_are_used_as_they_are():
    target = two_mode_target()
    gmm = D.fit_gmm(wrong_proportion_data(), 2)
    schedule = D.LinearVPSchedule(beta_min=0.2, beta_max=3.0)
    fitted = D.GaussianMixtureReference(schedule, gmm)
    assert LRDS(target, reference=fitted, **FAST).reference is fitted
    wrapped = LRDS(target, reference=gmm, beta_max=3.0, **FAST).reference
    assert wrapped.gmm is gmm and wrapped.schedule.beta_max == 3.0

    duck = LRDS(target, reference=DelegatingReference(fitted), n_steps=20, **FAST)
    plain = LRDS(target, reference=fitted, n_steps=20, **FAST)
    a, b = duck.sample(500, generator=4), plain.sample(500, generator=4)
    torch.testing.assert_close(a.x, b.x, rtol=0, atol=0)
    torch.testing.assert_close(a.log_weights, b.log_weights, rtol=0, atol=0)
    duck.fit(2)  # trains the network only


def test_trainable_reference_parameters_are_frozen():
    gmm = D.GMM.from_covariances(torch.tensor([[-2.0], [2.5]]), torch.ones(2, 1), trainable=True)
    sampler = LRDS(two_mode_target(), reference=gmm, n_steps=10, **FAST)
    assert all(not p.requires_grad for p in sampler.reference.parameters())
    assert [id(p) for p in sampler.trainer.params] == [id(p) for p in sampler.net.parameters()]


def test_particle_system_lives_on_the_com_free_space():
    system = HarmonicCluster()
    data = system.sample_exact(3000, torch.Generator().manual_seed(0))
    sampler = LRDS(system, reference=data, reference_kind="gmm", n_components=1, n_steps=20, **FAST)
    assert sampler.reference.gmm.dim == system.com_free_dim
    out = sampler.sample(20_000, generator=5)
    assert float(system.as_particles(out.x).mean(dim=1).abs().max()) < 1e-5
    w = torch.exp(out.log_weights.double() - system.log_z)
    mean, se = float(w.mean()), float(w.std() / math.sqrt(len(w)))
    assert se < 0.01 and abs(mean - 1) < 4 * se


def test_save_and_load_keep_the_fitted_reference(tmp_path):
    target = two_mode_target()
    sampler = LRDS(target, reference=wrong_proportion_data(), n_steps=10, **FAST).fit(2)
    path = sampler.save(tmp_path / "lrds.pt")
    loaded = DiffusionSampler.load(path, system=two_mode_target())
    assert isinstance(loaded, LRDS)
    torch.testing.assert_close(loaded.reference.gmm.means, sampler.reference.gmm.means)
    a, b = sampler.sample(300, generator=6), loaded.sample(300, generator=6)
    torch.testing.assert_close(a.x, b.x, rtol=0, atol=0)
    torch.testing.assert_close(a.log_weights, b.log_weights, rtol=0, atol=0)


def test_bad_references_fail_clearly():
    target = two_mode_target()
    with pytest.raises(ConfigError, match="LRDS reference"):
        LRDS(target, reference="samples.h5", **FAST)
    with pytest.raises(ShapeError, match=r"\(n, 1\)"):
        LRDS(target, reference=torch.zeros(10, 3), **FAST)
