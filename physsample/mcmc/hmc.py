"""Batched Hamiltonian Monte Carlo (HMC), many chains at once.

One HMC step draws momenta p ~ N(0, I), runs ``n_leapfrog`` leapfrog steps of size eps
on H(x, p) = -log p(x) + |p|^2 / 2,

    p <- p + eps/2 grad log p(x);  x <- x + eps p;  p <- p + eps/2 grad log p(x),

and accepts the end point with probability min(1, exp(H_start - H_end)). The step size
of each step is jittered, eps * U(1 - jitter, 1 + jitter) per chain, which breaks the
periodic orbits that a fixed trajectory length can fall into on near-Gaussian targets.

Same shape as :mod:`physsample.mcmc.mala`: :class:`HMCState` (the MALA state: position,
log-density, gradient), :class:`HMCInfo`, :func:`init`, :func:`build_kernel` and the
driver :func:`hmc`, which shares MALA's per-chain step-size adaptation. For a
:class:`~physsample.systems.ParticleSystem` the momenta are drawn on the
centre-of-mass-free subspace (``system.remove_com``), so the chains stay there.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch

from physsample.errors import ConfigError
from physsample.mcmc.mala import (
    Kernel,
    MALAState,
    finite_or_reject,
    log_prob_and_grad,
    project_fn,
    run_chains,
)
from physsample.samples import Samples
from physsample.systems.base import System

__all__ = ["HMCState", "HMCInfo", "init", "build_kernel", "hmc"]

HMCState = MALAState


class HMCInfo(NamedTuple):
    """Acceptance probability (C,), acceptance (C,) and divergence (C,) of one step.

    A trajectory diverges when a position becomes non-finite; it is then rejected.
    """

    acceptance_prob: torch.Tensor
    is_accepted: torch.Tensor
    is_divergent: torch.Tensor


def init(system: System, position: torch.Tensor) -> HMCState:
    """The state at ``position`` (C, d)."""
    lp, grad = log_prob_and_grad(system, position)
    return HMCState(position, lp, grad)


def _leapfrog(system, state: HMCState, p: torch.Tensor, eps: torch.Tensor, n: int):
    """``n`` leapfrog steps of size ``eps`` (C, 1); chains whose position becomes
    non-finite are frozen and flagged. Returns (end state, end momenta, diverged (C,))."""
    x, lp, grad = state
    diverged = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
    p = p + 0.5 * eps * grad
    for i in range(n):
        x_new = x + eps * p
        diverged = diverged | ~torch.isfinite(x_new).all(dim=1)
        x = torch.where(diverged[:, None], x, x_new)
        lp, grad = log_prob_and_grad(system, x)
        p = p + (eps if i < n - 1 else 0.5 * eps) * grad
    return HMCState(x, lp, grad), p, diverged


def build_kernel(system: System, n_leapfrog: int = 10, jitter: float = 0.2) -> Kernel:
    """``kernel(generator, state, step_size) -> (state, info)``, step_size a (C,) tensor."""
    project = project_fn(system)

    def kernel(generator, state: HMCState, step_size: torch.Tensor):
        x = state.position
        p0 = project(torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device))
        u = torch.rand(x.shape[0], generator=generator, dtype=x.dtype, device=x.device)
        eps = (step_size * (1.0 + jitter * (2.0 * u - 1.0)))[:, None]
        end, p, diverged = _leapfrog(system, state, p0, eps, n_leapfrog)
        log_alpha = (end.log_prob - 0.5 * (p * p).sum(dim=1)) - (
            state.log_prob - 0.5 * (p0 * p0).sum(dim=1)
        )
        log_alpha = finite_or_reject(log_alpha.masked_fill(diverged, -math.inf))
        log_u = torch.log(
            torch.rand(x.shape[0], generator=generator, dtype=x.dtype, device=x.device)
        )
        accepted = log_u < log_alpha
        new = HMCState(
            *(
                torch.where(accepted.view(-1, *[1] * (a.ndim - 1)), a, b)
                for a, b in zip(end, state, strict=True)
            )
        )
        return new, HMCInfo(torch.exp(log_alpha.clamp(max=0.0)), accepted, diverged)

    return kernel


def hmc(
    system: System,
    x0: torch.Tensor | np.ndarray,
    n_steps: int,
    step_size: float | None = None,
    n_leapfrog: int = 10,
    target_accept: float = 0.65,
    n_warmup: int | None = None,
    thin: int = 1,
    jitter: float = 0.2,
    seed: int | None = 0,
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> Samples:
    """Run one HMC chain per row of ``x0`` and return the post-warmup states.

    Parameters
    ----------
    system
        The target exp(-energy); any :class:`~physsample.systems.System`.
    x0
        Starting points (n_chains, dim); their dtype and device are used throughout.
        Particle systems are centred.
    n_steps
        HMC steps (trajectories) per chain after warmup; ``n_steps // thin`` states are
        kept per chain.
    step_size
        Initial leapfrog step eps. ``None``: the largest of 1e-4 ... 1e1 (half decades)
        with mean acceptance >= ``target_accept`` in one trial step.
    n_leapfrog
        Leapfrog steps per trajectory (gradient evaluations per HMC step).
    target_accept
        Acceptance probability the warmup adapts to (0.65 is optimal in high dimension).
    n_warmup
        Warmup steps per chain, discarded, with per-chain step-size adaptation; default
        ``n_steps // 2``. ``0`` keeps ``step_size`` fixed.
    thin
        Keep every ``thin``-th post-warmup state.
    jitter
        Relative step-size jitter in [0, 1): each trajectory uses eps * U(1 - jitter,
        1 + jitter).
    seed, generator
        Randomness: a ``torch.Generator`` on ``x0``'s device, or a seed for a new one.
    progress
        Show tqdm progress bars.

    Returns
    -------
    Samples
        As for :func:`~physsample.mcmc.mala.mala`: chain-major ``x``, no log-weights,
        diagnostics and settings in the metadata (which adds ``n_leapfrog`` and
        ``jitter`` to the settings). Each HMC step costs ``n_leapfrog`` energy and
        gradient evaluations per chain.

    Examples
    --------
    >>> import physsample as ps  # doctest: +SKIP
    >>> system = ps.systems.get("funnel")  # doctest: +SKIP
    >>> out = ps.mcmc.hmc(system, torch.zeros(16, 10), n_steps=1_000)  # doctest: +SKIP
    """
    if not isinstance(system, System):
        raise ConfigError(f"hmc: system must be a physsample System, got {type(system).__name__}")
    if int(n_leapfrog) < 1 or not 0.0 <= float(jitter) < 1.0:
        raise ConfigError(
            f"hmc: need n_leapfrog >= 1 and 0 <= jitter < 1; got {n_leapfrog}, {jitter}"
        )
    return run_chains(
        system,
        x0,
        build_kernel(system, int(n_leapfrog), float(jitter)),
        init,
        method="hmc",
        n_steps=n_steps,
        n_warmup=n_warmup,
        thin=thin,
        step_size=step_size,
        target_accept=target_accept,
        step_grid=np.logspace(-4.0, 1.0, 11),
        evals_per_step=int(n_leapfrog),
        seed=seed,
        generator=generator,
        progress=progress,
        settings={"n_leapfrog": int(n_leapfrog), "jitter": float(jitter)},
    )
