"""LRDS with the score-network reference (``reference_kind="score"``).

- on DW-4 MD data, a short DSM fit of the equivariant reference lowers the DSM loss
  of the moment-matched Gaussian (its untrained network) by many standard errors,
  paired on the same noise;
- the untrained sampler's path weights stay exact importance weights, E[w] = Z, on a
  particle system with a known log Z (CoM-free space, e3nn networks);
- the reference network is a separate, frozen copy of the control network; save and
  load round-trip exactly; bad options fail clearly.
"""

from __future__ import annotations

import math

import pytest
import torch
from methods_testlib import HarmonicCluster

import physsample as ps
from physsample.errors import ConfigError
from physsample.methods import LRDS, DiffusionSampler
from physsample.methods.score_reference import ScoreNetworkReference, dsm_loss
from physsample.nets import E3NNControl

FAST = dict(device="cpu", progress=False)
F64 = torch.float64


def small_net(system, channels: int = 4) -> E3NNControl:
    torch.manual_seed(0)
    return E3NNControl(
        n_particles=system.n_particles, spatial_dim=system.spatial_dim, channels=channels,
        n_layers=2, n_radial=8, r_max=8.0,
    )  # fmt: skip


def dw4_data(n: int = 1000) -> torch.Tensor:
    md = ps.Samples.load("systems/dw4/reference_md.h5")
    return md.x[:n].double()


def paired_dsm_gain(trained, untrained, data, n_batches=8, batch=512) -> tuple[float, float]:
    """Mean and standard error of L(untrained) - L(trained) over batches of the same noise."""
    diffs = []
    with torch.no_grad():
        for k in range(n_batches):
            losses = [
                float(dsm_loss(ref, data, batch, torch.Generator().manual_seed(100 + k)))
                for ref in (untrained, trained)
            ]
            diffs.append(losses[0] - losses[1])
    d = torch.tensor(diffs, dtype=F64)
    return float(d.mean()), float(d.std() / math.sqrt(n_batches))


def test_lrds_fits_an_equivariant_score_reference_that_lowers_the_dsm_loss():
    system = ps.systems.get("dw4")
    net = small_net(system)
    sampler = LRDS(
        system, reference=dw4_data(), reference_kind="score", net=net, score_steps=150,
        score_lr=3e-3, score_batch_size=128, sigma=2.0, n_steps=10, **FAST,
    )  # fmt: skip
    ref = sampler.reference
    assert isinstance(ref, ScoreNetworkReference)
    assert isinstance(ref.net, E3NNControl) and ref.net is not sampler.net
    assert not any(p.requires_grad for p in ref.parameters())
    assert sampler.method_settings["reference"]["kind"] == "score"
    # the same reference with the untrained (zero-output) network: the Gaussian score
    gaussian_net = small_net(system)
    untrained = ScoreNetworkReference(ref.schedule, ref.space, gaussian_net, None, ref.data_var)
    data = sampler.space.project(dw4_data()).float()
    gain, se = paired_dsm_gain(ref, untrained, data)
    assert gain > 5 * se and gain > 0.05


def test_untrained_sampler_on_a_score_reference_has_unbiased_weights():
    system = HarmonicCluster()
    data = system.sample_exact(2000, torch.Generator().manual_seed(0))
    sampler = LRDS(
        system, reference=data, reference_kind="score", net=small_net(system),
        score_steps=100, score_lr=3e-3, score_batch_size=128, n_steps=10, **FAST,
    )  # fmt: skip
    out = sampler.sample(6000, generator=5)
    assert float(system.as_particles(out.x).mean(dim=1).abs().max()) < 1e-5
    w = torch.exp(out.log_weights.double() - system.log_z)
    mean, se = float(w.mean()), float(w.std() / math.sqrt(len(w)))
    assert se < 0.03 and abs(mean - 1) < 4 * se


def test_save_and_load_keep_the_score_reference(tmp_path):
    system = HarmonicCluster()
    data = system.sample_exact(500, torch.Generator().manual_seed(1))
    sampler = LRDS(
        system, reference=data, reference_kind="score", net="e3nn", n_layers=1,
        score_steps=20, score_batch_size=64, n_steps=5, batch_size=16, **FAST,
    )  # fmt: skip
    sampler.fit(2)
    path = sampler.save(tmp_path / "lrds.pt")
    loaded = DiffusionSampler.load(path, system=HarmonicCluster())
    assert isinstance(loaded.reference, ScoreNetworkReference)
    saved, read = sampler.reference.state_dict(), loaded.reference.state_dict()
    assert saved.keys() == read.keys()
    for key in saved:
        torch.testing.assert_close(saved[key], read[key], rtol=0, atol=0)
    a, b = sampler.sample(200, generator=6), loaded.sample(200, generator=6)
    torch.testing.assert_close(a.x, b.x, rtol=0, atol=0)
    torch.testing.assert_close(a.log_weights, b.log_weights, rtol=0, atol=0)


def test_bad_score_options_fail_clearly():
    system = HarmonicCluster()
    data = system.sample_exact(100, torch.Generator().manual_seed(2))
    with pytest.raises(ConfigError, match="reference_kind"):
        LRDS(system, reference=data, reference_kind="flow", **FAST)
    with pytest.raises(ConfigError, match="score_steps"):
        LRDS(system, reference=data, reference_kind="score", score_steps=0, **FAST)


@pytest.mark.parametrize("k", [0.5, 4.5])
def test_auto_kind_and_sigma_follow_the_system_and_the_data(k):
    system = HarmonicCluster(k=k)
    data = system.sample_exact(2000, torch.Generator().manual_seed(0))
    sampler = LRDS(system, reference=data, net=small_net(system), score_steps=2, n_steps=4,
                   **FAST)  # fmt: skip
    assert sampler.method_settings["reference_kind"] == "score"  # auto, particle system
    # per-coordinate variance of the CoM-free Gaussian: (1 - 1/n) / (k n)
    n = system.n_particles
    expected = math.sqrt((1 - 1 / n) / (k * n))
    assert sampler.method_settings["sigma"] == pytest.approx(expected, rel=0.05)
    assert sampler.reference.schedule.sigma == pytest.approx(expected, rel=0.05)
    mixture = LRDS(ps.systems.get("gmm25"), reference=torch.randn(500, 2), n_components=1,
                   n_steps=4, **FAST)  # fmt: skip
    assert mixture.method_settings["reference_kind"] == "gmm"
    assert mixture.method_settings["sigma"] == 1.0
