"""The outlier rule of the losses: a cut relative to the batch's robust spread, with a floor.

``usable_mask`` drops non-finite log w and finite ones further from the batch median than
``max(max_deviation, SPREAD_MULTIPLE * 1.4826 * MAD)``. The old rule (a fixed
``max_deviation`` = 1000 nats, i.e. ``SPREAD_MULTIPLE = 0``) dropped all but one
trajectory of every batch of DIS on gmm40 (d = 50), whose log w are spread over tens of
thousands of nats early in training, so every step was skipped.
"""

from __future__ import annotations

import math

import pytest
import torch

import physsample as ps
from physsample import diffusion as D
from physsample.diffusion import losses
from physsample.methods import DIS

F64 = torch.float64


def _old_rule_used(log_w: torch.Tensor, max_deviation: float) -> int:
    """Trajectories the fixed cut of ``max_deviation`` nats around the median keeps."""
    finite = log_w[torch.isfinite(log_w)]
    return int(((finite - finite.median()).abs() <= max_deviation).sum())


def test_widely_spread_batch_keeps_its_bulk():
    # log w spread over ~1e6 nats: within 1000 nats of the median lies only the median
    g = torch.Generator().manual_seed(0)
    log_w = -1.0e6 * torch.randn(256, generator=g, dtype=F64).abs()
    assert _old_rule_used(log_w, 1000.0) < 2  # the old rule left nothing to train on
    loss, info = D.log_variance_loss(log_w.clone().requires_grad_(True), max_deviation=1000.0)
    assert int(info["n_used"]) == 256 and int(info["n_extreme"]) == 0
    torch.testing.assert_close(loss.detach(), log_w.var())
    kl, kl_info = D.reverse_kl_loss(log_w, max_deviation=1000.0)
    assert math.isfinite(float(kl)) and int(kl_info["n_used"]) == 256


def test_extreme_outliers_are_still_dropped_and_counted():
    g = torch.Generator().manual_seed(1)
    bulk = 3.0 * torch.randn(200, generator=g, dtype=F64)
    log_w = torch.cat([bulk, torch.tensor([5.0e4, -2.0e3, 900.0, math.nan, -math.inf], dtype=F64)])
    log_w.requires_grad_(True)
    loss, info = D.log_variance_loss(log_w, max_deviation=1000.0)
    # robust spread ~3 nats: the floor (1000 nats) is the cut; 900 is kept
    assert int(info["n_nonfinite"]) == 2 and int(info["n_extreme"]) == 2
    assert int(info["n_used"]) == 201
    kept = torch.cat([bulk, torch.tensor([900.0], dtype=F64)])
    torch.testing.assert_close(loss, kept.var())
    (grad,) = torch.autograd.grad(loss, log_w)
    assert bool(torch.isfinite(grad).all())
    assert float(grad[[200, 201, 203, 204]].abs().sum()) == 0.0 and float(grad[202]) != 0.0


def test_cut_follows_the_robust_spread():
    # robust sd 1000 nats: 15 sd (15000 nats, beyond the floor) is kept, 30 sd is dropped
    g = torch.Generator().manual_seed(2)
    bulk = 1000.0 * torch.randn(999, generator=g, dtype=F64)
    mask, info = D.usable_mask(torch.cat([bulk, torch.tensor([1.5e4], dtype=F64)]), 1000.0)
    assert bool(mask[-1])
    mask, info = D.usable_mask(torch.cat([bulk, torch.tensor([3.0e4], dtype=F64)]), 1000.0)
    assert not bool(mask[-1]) and int(info["n_extreme"]) >= 1
    # the floor still holds for a tight batch: 500 nats out is kept at spread ~1 nat
    tight = torch.cat([torch.randn(99, generator=g, dtype=F64), torch.tensor([500.0], dtype=F64)])
    assert bool(D.usable_mask(tight, 1000.0)[0][-1])
    assert not bool(D.usable_mask(tight, 100.0)[0][-1])


@pytest.mark.parametrize("seed", range(5))
def test_never_drops_more_than_half_of_the_finite(seed):
    g = torch.Generator().manual_seed(seed)
    # Cauchy-tailed log w on wildly different scales, with ties and non-finite values
    u = torch.rand(301, generator=g, dtype=F64)
    log_w = 10.0 ** (6 * seed / 4) * torch.tan(math.pi * (u - 0.5))
    log_w[:40] = log_w[0]
    log_w[40:45] = math.nan
    _, info = D.usable_mask(log_w, 1.0)
    n_finite = 301 - int(info["n_nonfinite"])
    assert int(info["n_extreme"]) <= n_finite // 2
    assert int(info["n_used"]) + int(info["n_extreme"]) == n_finite


def test_dis_on_gmm40_keeps_training(monkeypatch):
    # the failure seen in benchmarks/gmp.md: DIS on gmm40 (d=50), prior sigma 20
    system = ps.systems.get("gmm40", dim=50)

    def skipped_steps() -> tuple[int, float]:
        sampler = DIS(system, sigma=20.0, n_steps=16, batch_size=64, seed=0, progress=False)
        sampler.fit(30)
        history = sampler.trainer.history
        used = sum(row["n_used"] for row in history) / len(history)
        return sum(int(row["skipped"]) for row in history), used

    skipped, used = skipped_steps()
    assert skipped == 0 and used >= 32
    monkeypatch.setattr(losses, "SPREAD_MULTIPLE", 0.0)  # the old fixed 1000-nat cut
    old_skipped, old_used = skipped_steps()
    assert old_skipped >= 10 and old_used < 16
