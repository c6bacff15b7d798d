"""On CUDA: the step loop and the chunked backward make no host-device synchronisation.

Skipped without a GPU. ``torch.cuda.set_sync_debug_mode("error")`` turns every
synchronising call (``.item()``, ``.cpu()``, data-dependent shapes, ...) into an error.
"""

from __future__ import annotations

import pytest
import torch
from diffusion_testlib import RandomControl, TwoModes, make_reference

from physsample import diffusion as D

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


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
