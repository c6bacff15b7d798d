"""On CUDA: the step loop and the chunked backward make no host-device synchronisation.

Every method trains and samples on CUDA, and a whole training step of a sampler
(rollout, loss, batch statistics, backward) makes no synchronisation either. The CUDA
tests are skipped without a GPU. ``torch.cuda.set_sync_debug_mode("error")`` turns every
synchronising call (``.item()``, ``.cpu()``, data-dependent shapes, ...) into an error.
Mixed precision (``amp=True``) is checked on the CPU too: the network runs in bfloat16,
the path weights in float32.
"""

from __future__ import annotations

import pytest
import torch
from diffusion_testlib import RandomControl, TwoModes, make_reference

from physsample import diffusion as D

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@needs_cuda
@pytest.mark.parametrize("kind", ["dis", "pis", "gmm"])
def test_simulation_and_chunked_backward_do_not_synchronise(kind):
    device = torch.device("cuda")
    target = TwoModes([1.0, -0.5], 0.6, 2.0).to(device)
    reference = make_reference(kind, D.GaussianSpace(2)).to(device)
    process = D.GenerativeProcess(reference, D.uniform_grid(8))
    net = RandomControl(2, seed=0, scale=0.3).to(device=device, dtype=torch.float32)
    control = D.residual_control(reference, net)
    params = list(net.parameters())
    generator = torch.Generator(device=device).manual_seed(0)

    def run():
        x0 = reference.sample_prior(256, generator, torch.float32, device)
        torch.cuda.set_sync_debug_mode("error")
        try:
            with torch.no_grad():
                out = D.simulate(process, control, target.log_prob, 0, generator=generator, x0=x0)
            log_w = D.log_weights_from_states(
                process,
                control,
                target.log_prob,
                out.states,
                chunk=3,
                params=params,
                log_weights=out.log_weights,
            )
            loss, _ = D.log_variance_loss(log_w)
            loss.backward()
        finally:
            torch.cuda.set_sync_debug_mode("default")
        return out, loss

    run()  # fills the per-device caches (coefficients, CoM basis)
    out, loss = run()
    assert out.states.device.type == "cuda" and out.states.dtype == torch.float32
    assert bool(torch.isfinite(loss)) and all(p.grad is not None for p in params)


def _small(method: str, device: str = "cuda", **options):
    from physsample import methods
    from physsample.systems import get

    settings = dict(n_steps=10, batch_size=64, device=device, progress=False, seed=0)
    if method == "LRDS":
        settings.update(mcmc_steps=100, n_components=25)
    return getattr(methods, method)(get("gmm25"), **{**settings, **options})


@needs_cuda
@pytest.mark.parametrize("method", ["PIS", "DDS", "DIS", "LRDS"])
@pytest.mark.parametrize("loss", ["lv", "kl"])
def test_every_method_trains_and_samples_on_cuda(method, loss):
    sampler = _small(method, loss=loss).fit(3)
    assert all(p.device.type == "cuda" for p in sampler.model.parameters())
    assert sampler.trainer.generator.device.type == "cuda"
    assert sampler.trainer.bad_steps == 0
    out = sampler.sample(512, generator=0)
    assert out.x.shape == (512, 2) and bool(torch.isfinite(out.log_weights).all())
    assert 0.0 < out.metadata["ess"] <= 1.0


@needs_cuda
@pytest.mark.parametrize("method", ["PIS", "DIS"])
def test_a_training_step_of_a_sampler_does_not_synchronise(method):
    """Rollout, global LV loss, ESS/log Z of the batch and chunked backward: no .item()."""
    sampler = _small(method, chunk=4)
    model, generator = sampler.model, sampler.trainer.generator

    def step(k):
        loss, info = sampler._loss(model, generator, k)
        loss.backward()
        return loss, info

    step(0)  # fills the per-device caches
    torch.cuda.set_sync_debug_mode("error")
    try:
        loss, info = step(1)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert bool(torch.isfinite(loss)) and float(info["n_used"]) == 64


def _amp_check(device: str) -> None:
    sampler = _small("DIS", device=device, amp=True, batch_size=32)
    seen = []
    first = next(m for m in sampler.net.modules() if isinstance(m, torch.nn.Linear))
    first.register_forward_hook(lambda module, args, out: seen.append(out.dtype))
    sampler.fit(2)
    out = sampler.sample(256, generator=0)
    assert seen and set(seen) == {torch.bfloat16}  # the network ran in bfloat16
    assert sampler.trainer.bad_steps == 0
    assert all(p.dtype == torch.float32 for p in sampler.model.parameters())
    assert out.log_weights.dtype == torch.float32 and out.x.dtype == torch.float32
    assert bool(torch.isfinite(out.log_weights).all())


def test_mixed_precision_keeps_path_weights_in_float32_cpu():
    torch.set_num_threads(1)
    _amp_check("cpu")


@needs_cuda
def test_mixed_precision_keeps_path_weights_in_float32_cuda():
    _amp_check("cuda")


def test_mixed_precision_needs_float32():
    from physsample.errors import ConfigError

    with pytest.raises(ConfigError, match="amp"):
        _small("PIS", device="cpu", amp=True, dtype="float64")


HOST_READS = ("item", "tolist", "numpy", "__float__", "__int__", "__bool__", "__index__")


@pytest.fixture
def host_reads(monkeypatch):
    """A list that records every Python-level read of a tensor's value into the host."""
    calls = []
    for name in HOST_READS:
        method = getattr(torch.Tensor, name)

        def counted(self, *args, _name=name, _method=method, **kwargs):
            calls.append(_name)
            return _method(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    return calls


@pytest.mark.parametrize("method", ["PIS", "DDS", "DIS"])
def test_training_step_and_sampling_loop_read_nothing_back_cpu(method, host_reads):
    """The CPU stand-in of the CUDA test above: no .item(), float(), bool(), numpy()."""
    torch.set_num_threads(1)
    sampler = _small(method, device="cpu", chunk=4)
    model, generator = sampler.model, sampler.trainer.generator
    loss, _ = sampler._loss(model, generator, 0)  # fills the caches
    loss.backward()
    host_reads.clear()  # building the sampler and the first step may read (caches)
    float(torch.ones(()))  # the counter works
    assert host_reads == ["__float__"]
    host_reads.clear()
    loss, info = sampler._loss(model, generator, 1)
    loss.backward()
    with torch.no_grad():
        sampler._simulate(model, sampler.system.log_prob, 128, generator, keep_states=False)
    assert host_reads == []
