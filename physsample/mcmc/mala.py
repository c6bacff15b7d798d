"""Batched Metropolis-adjusted Langevin algorithm (MALA), many chains at once.

One MALA step from x with step size tau (per chain) proposes

    y = x + tau grad log p(x) + sqrt(2 tau) xi,    xi ~ N(0, I),

and accepts with probability min(1, p(y) q(x | y) / (p(x) q(y | x))), where
log q(y | x) = -|y - x - tau grad log p(x)|^2 / (4 tau) + const.

The module has the blackjax shape: a :class:`MALAState` caching the log-density and
its gradient, a :class:`MALAInfo` with the acceptance statistics (never fed back into
sampling), :func:`init`, :func:`build_kernel` returning ``kernel(generator, state,
step_size)``, and the driver :func:`mala` that adapts the step size, runs, thins and
returns :class:`~physsample.samples.Samples` with diagnostics.

It also holds the pieces that :mod:`physsample.mcmc.hmc` shares: the combined
log-density-and-gradient evaluation, per-chain Robbins-Monro step-size adaptation and
the chain driver :func:`run_chains`.

Particle systems
----------------
For a :class:`~physsample.systems.ParticleSystem` the chains live on the
centre-of-mass-free subspace (as the samplers do): the starting points are centred,
and the Gaussian noise (for HMC, the momenta) and the gradient are projected with
``system.remove_com``. The proposal is then a Gaussian on that subspace and the
acceptance ratio above is exact there.

Everything runs on the device and in the float dtype of ``x0``; a step does not
synchronise with the host (the step size is adapted on the device) except to update a
progress bar every 1% of the steps when ``progress=True``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np
import torch

from physsample.errors import ConfigError
from physsample.mcmc.diagnostics import (
    acceptance_summary,
    integrated_autocorr_time,
    split_rhat,
)
from physsample.samples import Samples
from physsample.systems.base import ParticleSystem, System

__all__ = [
    "MALAState",
    "MALAInfo",
    "init",
    "build_kernel",
    "mala",
    "log_prob_and_grad",
    "AdaptationState",
    "adaptation_init",
    "adaptation_update",
    "adapted_step_size",
    "run_chains",
]

Kernel = Callable[[torch.Generator, Any, torch.Tensor], tuple[Any, Any]]


# -- shared building blocks ------------------------------------------------------------
def project_fn(system: System) -> Callable[[torch.Tensor], torch.Tensor]:
    """``system.remove_com`` for particle systems, else the identity."""
    if isinstance(system, ParticleSystem):
        return system.remove_com
    return lambda v: v


def log_prob_and_grad(system: System, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """log p(x) (C,) and grad log p(x) (C, d) from one evaluation (``energy_and_force``).

    Equivalent to ``(system.log_prob(x), system.score(x))`` at the cost of one energy
    evaluation instead of two (one OpenMM pass for an OpenMMSystem). Rows with a
    non-finite log p are later rejected.
    """
    energy, force = system.energy_and_force(x.detach())
    return -energy, project_fn(system)(force)


def finite_or_reject(log_alpha: torch.Tensor) -> torch.Tensor:
    """Turn NaN log acceptance ratios (e.g. inf - inf) into -inf: always reject."""
    return torch.nan_to_num(log_alpha, nan=-math.inf, posinf=math.inf)


class AdaptationState(NamedTuple):
    """Per-chain Robbins-Monro step-size adaptation; tensors are (C,)."""

    log_step: torch.Tensor
    log_step_sum: torch.Tensor
    n_averaged: int
    t: int


def adaptation_init(step_size: torch.Tensor) -> AdaptationState:
    """Start the adaptation at ``step_size`` (C,)."""
    log_step = torch.log(step_size)
    return AdaptationState(log_step, torch.zeros_like(log_step), 0, 0)


def adaptation_update(
    state: AdaptationState,
    accept_prob: torch.Tensor,
    target: float,
    average: bool,
    t0: float = 10.0,
    kappa: float = 0.6,
) -> AdaptationState:
    """One Robbins-Monro update of each chain's log step size towards ``target``.

    With t = 1, 2, ... and alpha_t the acceptance probability of step t (C,),

        log eps_t = log eps_{t-1} + (1 + t / t0)^-kappa (alpha_t - target),

    a stochastic-approximation root search for E[alpha | eps] = target. The gain
    starts near 1 (fast from a bad start) and decays, so the iterates settle to within
    about 0.1 in log eps of the root after a few hundred steps. With ``average`` the
    iterate is added to the Polyak-Ruppert average that :func:`adapted_step_size`
    returns (used over the second half of the warmup).
    """
    t = state.t + 1
    log_step = state.log_step + (1.0 + t / t0) ** -kappa * (accept_prob - target)
    if not average:
        return AdaptationState(log_step, state.log_step_sum, state.n_averaged, t)
    return AdaptationState(log_step, state.log_step_sum + log_step, state.n_averaged + 1, t)


def adapted_step_size(state: AdaptationState) -> torch.Tensor:
    """The frozen step sizes: exp of the averaged log step, else of the last iterate."""
    if state.n_averaged == 0:
        return torch.exp(state.log_step)
    return torch.exp(state.log_step_sum / state.n_averaged)


# -- MALA ------------------------------------------------------------------------------
class MALAState(NamedTuple):
    """Positions (C, d) with their cached log-density (C,) and its gradient (C, d)."""

    position: torch.Tensor
    log_prob: torch.Tensor
    grad: torch.Tensor


class MALAInfo(NamedTuple):
    """Acceptance probability min(1, ratio) (C,) and whether the proposal was taken (C,)."""

    acceptance_prob: torch.Tensor
    is_accepted: torch.Tensor


def init(system: System, position: torch.Tensor) -> MALAState:
    """The state at ``position`` (C, d)."""
    lp, grad = log_prob_and_grad(system, position)
    return MALAState(position, lp, grad)


def _log_q(to: torch.Tensor, start: MALAState, step: torch.Tensor) -> torch.Tensor:
    """log q(to | start) up to a constant, for step sizes ``step`` (C, 1)."""
    diff = to - start.position - step * start.grad
    return -(diff * diff).sum(dim=1) / (4.0 * step[:, 0])


def build_kernel(system: System) -> Kernel:
    """``kernel(generator, state, step_size) -> (state, info)``, step_size a (C,) tensor."""
    project = project_fn(system)

    def kernel(generator, state: MALAState, step_size: torch.Tensor):
        step = step_size[:, None]
        x = state.position
        noise = project(torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device))
        y = x + step * state.grad + torch.sqrt(2.0 * step) * noise
        bad = ~torch.isfinite(y).all(dim=1)
        y = torch.where(bad[:, None], x, y)
        proposal = init(system, y)
        log_alpha = (
            proposal.log_prob - state.log_prob + _log_q(x, proposal, step) - _log_q(y, state, step)
        )
        log_alpha = finite_or_reject(log_alpha.masked_fill(bad, -math.inf))
        log_u = torch.log(
            torch.rand(x.shape[0], generator=generator, dtype=x.dtype, device=x.device)
        )
        accepted = log_u < log_alpha
        new = MALAState(
            *(
                torch.where(accepted.view(-1, *[1] * (a.ndim - 1)), a, b)
                for a, b in zip(proposal, state, strict=True)
            )
        )
        return new, MALAInfo(torch.exp(log_alpha.clamp(max=0.0)), accepted)

    return kernel


# -- the shared driver -----------------------------------------------------------------
def _check_settings(n_steps, n_warmup, thin, target_accept, step_size) -> None:
    if int(n_steps) < 1 or int(thin) < 1 or int(n_warmup) < 0:
        raise ConfigError(
            f"need n_steps >= 1, thin >= 1, n_warmup >= 0; got {n_steps}, {thin}, {n_warmup}"
        )
    if int(n_steps) // int(thin) < 1:
        raise ConfigError(f"n_steps={n_steps} with thin={thin} keeps no sample")
    if not 0.0 < float(target_accept) < 1.0:
        raise ConfigError(f"target_accept must be in (0, 1), got {target_accept}")
    if step_size is not None and not float(step_size) > 0:
        raise ConfigError(f"step_size must be positive, got {step_size}")


def _start(system: System, x0: Any) -> torch.Tensor:
    if isinstance(x0, torch.Tensor):
        x = x0.detach().clone()
    else:
        x = torch.as_tensor(np.asarray(x0), device=system.device)
    if x.ndim == 1:
        x = x[None]
    if not x.is_floating_point():
        x = x.to(torch.float64)
    system.check_positions(x)
    return project_fn(system)(x) if isinstance(system, ParticleSystem) else x


def _generator(device: torch.device, seed: int | None, generator: torch.Generator | None):
    if generator is not None:
        return generator
    return torch.Generator(device=device).manual_seed(int(seed if seed is not None else 0))


def initial_step_size(kernel: Kernel, state, generator, grid: np.ndarray, target: float):
    """Largest step size of ``grid`` whose mean acceptance over chains is >= ``target``.

    Runs one trial step per grid value from ``state`` (the state is not advanced) and
    returns a (C,) tensor; falls back to the smallest grid value. No host sync.
    """
    x = state.position
    means = []
    for value in grid:
        step = torch.full((x.shape[0],), float(value), dtype=x.dtype, device=x.device)
        means.append(kernel(generator, state, step)[1].acceptance_prob.mean())
    ok = torch.stack(means) >= target
    index = torch.where(ok, torch.arange(len(grid), device=x.device), 0).max()
    grid_t = torch.as_tensor(np.asarray(grid), dtype=x.dtype, device=x.device)
    return grid_t[index].expand(x.shape[0]).clone()


def _progress(total: int, desc: str, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc)


def run_chains(
    system: System,
    x0: Any,
    kernel: Kernel,
    init_fn: Callable[[System, torch.Tensor], Any],
    *,
    method: str,
    n_steps: int,
    n_warmup: int | None,
    thin: int,
    step_size: float | None,
    target_accept: float,
    step_grid: np.ndarray,
    evals_per_step: int,
    seed: int | None,
    generator: torch.Generator | None,
    progress: bool,
    settings: dict[str, Any],
) -> Samples:
    """Warm up with per-chain step-size adaptation, then sample, thin and summarise.

    The first ``n_warmup`` steps adapt each chain's step size towards
    ``target_accept`` (:func:`adaptation_update`) and are discarded; the step size is
    then frozen at the average of its log over the second half of the warmup. Of the
    following ``n_steps`` steps every ``thin``-th state is kept.
    """
    n_steps, thin = int(n_steps), int(thin)
    n_warmup = n_steps // 2 if n_warmup is None else int(n_warmup)
    _check_settings(n_steps, n_warmup, thin, target_accept, step_size)
    x = _start(system, x0)
    gen = _generator(x.device, seed, generator)
    started = time.perf_counter()
    with torch.no_grad():
        state = _init_checked(init_fn, system, x, method)
        step = _first_step_size(kernel, state, gen, step_size, step_grid, target_accept)
        initial = step.clone()
        bar = _progress(n_warmup, f"{method} warmup", progress)
        state, step, warm_acc = _warmup(kernel, state, step, gen, n_warmup, target_accept, bar)
        bar = _progress(n_steps, method, progress)
        kept, kept_lp, acc_sum = _sample(kernel, state, step, gen, n_steps, thin, bar)
    n_trials = len(step_grid) if step_size is None else 0
    run = {
        "energies": (-kept_lp.transpose(0, 1)).cpu().double().numpy(),  # (C, n_per_chain)
        "acceptance": (acc_sum / n_steps).cpu().double().numpy(),
        "warmup_acceptance": warm_acc,
        "step_size": {"initial": initial.cpu().tolist(), "final": step.cpu().tolist()},
        "evaluations": x.shape[0] * (1 + evals_per_step * (n_trials + n_warmup + n_steps)),
        "wall_time_s": time.perf_counter() - started,
    }
    settings = dict(
        settings, n_steps=n_steps, n_warmup=n_warmup, thin=thin, step_size=step_size,
        target_accept=float(target_accept), seed=None if generator is not None else seed,
        dtype=str(x.dtype), device=str(x.device),
    )  # fmt: skip
    positions = kept.transpose(0, 1).reshape(-1, x.shape[1])  # chain-major
    return Samples(positions, None, system, _metadata(method, run, settings))


def _init_checked(init_fn, system: System, x: torch.Tensor, method: str):
    """The initial state; every chain must start at a finite log-density."""
    state = init_fn(system, x)
    bad = (~torch.isfinite(state.log_prob)).nonzero().flatten().tolist()
    if bad:
        raise ConfigError(
            f"{method}: x0 has non-finite log-probability in chains {bad[:10]}; start "
            "the chains inside the support"
        )
    return state


def _first_step_size(kernel, state, gen, step_size, grid, target) -> torch.Tensor:
    """``step_size`` for every chain, or the grid heuristic when it is None."""
    if step_size is None:
        return initial_step_size(kernel, state, gen, grid, target)
    x = state.position
    return torch.full((x.shape[0],), float(step_size), dtype=x.dtype, device=x.device)


def _warmup(kernel, state, step, gen, n_warmup, target, bar):
    """Adaptive warmup; returns the state, the frozen step sizes, mean acceptance."""
    adapt = adaptation_init(step)
    acc_sum = torch.zeros_like(step)
    for i in range(n_warmup):
        state, info = kernel(gen, state, step)
        acc_sum += info.acceptance_prob
        adapt = adaptation_update(adapt, info.acceptance_prob, target, i >= n_warmup // 2)
        step = torch.exp(adapt.log_step)
        _tick(bar, i, n_warmup, acc_sum)
    if bar is not None:
        bar.close()
    if n_warmup == 0:
        return state, step, None
    return state, adapted_step_size(adapt), float(acc_sum.mean()) / n_warmup


def _sample(kernel, state, step, gen, n_steps, thin, bar):
    """Run ``n_steps`` steps at fixed step sizes, keeping every ``thin``-th state."""
    x = state.position
    n_keep = n_steps // thin
    kept = torch.empty((n_keep, *x.shape), dtype=x.dtype, device=x.device)
    kept_lp = torch.empty((n_keep, x.shape[0]), dtype=state.log_prob.dtype, device=x.device)
    acc_sum = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
    for i in range(n_steps):
        state, info = kernel(gen, state, step)
        acc_sum += info.acceptance_prob
        if (i + 1) % thin == 0:
            kept[i // thin] = state.position
            kept_lp[i // thin] = state.log_prob
        _tick(bar, i, n_steps, acc_sum)
    if bar is not None:
        bar.close()
    return kept, kept_lp, acc_sum


def _tick(bar, i: int, total: int, acc_sum: torch.Tensor) -> None:
    every = max(1, total // 100)
    if bar is not None and ((i + 1) % every == 0 or i + 1 == total):
        bar.set_postfix(acceptance=f"{float(acc_sum.mean()) / (i + 1):.3f}", refresh=False)
        bar.update((i + 1) - bar.n)


def _metadata(method: str, run: dict[str, Any], settings: dict[str, Any]) -> dict[str, Any]:
    """The diagnostics of a finished run, JSON-ready."""
    energies = run["energies"]
    n_chains, n_per_chain = energies.shape
    tau = integrated_autocorr_time(energies) if n_per_chain >= 2 else float("nan")
    return {
        "sampler": method,
        "n_chains": n_chains,
        "n_per_chain": n_per_chain,
        "acceptance": acceptance_summary(run["acceptance"][:, None]),
        "warmup_acceptance": run["warmup_acceptance"],
        "step_size": run["step_size"],
        "energy_mean": float(energies.mean()),
        "energy_autocorr_time": tau,
        "energy_autocorr_time_steps": tau * settings["thin"],
        "energy_ess": float(energies.size / tau) if tau > 0 else float("nan"),
        "energy_split_rhat": split_rhat(energies) if n_per_chain >= 4 else float("nan"),
        "wall_time_s": run["wall_time_s"],
        "energy_evaluations": run["evaluations"],
        "gradient_evaluations": run["evaluations"],
        "settings": settings,
    }


def mala(
    system: System,
    x0: torch.Tensor | np.ndarray,
    n_steps: int,
    step_size: float | None = None,
    target_accept: float = 0.574,
    n_warmup: int | None = None,
    thin: int = 1,
    seed: int | None = 0,
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> Samples:
    """Run one MALA chain per row of ``x0`` and return the post-warmup states.

    Parameters
    ----------
    system
        The target exp(-energy); any :class:`~physsample.systems.System`.
    x0
        Starting points (n_chains, dim), e.g. mode locations; their dtype and device
        are used throughout. Particle systems are centred (see the module docstring).
    n_steps
        Steps per chain after warmup; ``n_steps // thin`` states are kept per chain.
    step_size
        Initial tau (noise variance 2 tau). ``None``: the largest of 1e-6 ... 1e2 (half
        decades) with mean acceptance >= ``target_accept`` in one trial step.
    target_accept
        Acceptance probability the warmup adapts to (0.574 is optimal for MALA in high
        dimension).
    n_warmup
        Warmup steps per chain, discarded, with per-chain step-size adaptation;
        default ``n_steps // 2``. ``0`` keeps ``step_size`` fixed.
    thin
        Keep every ``thin``-th post-warmup state.
    seed, generator
        Randomness: a ``torch.Generator`` on ``x0``'s device, or a seed for a new one.
    progress
        Show tqdm progress bars.

    Returns
    -------
    Samples
        ``x`` of shape (n_chains * n_per_chain, dim), chain-major (chain c holds rows
        ``c * n_per_chain ... (c + 1) * n_per_chain - 1``), no log-weights. The
        metadata holds ``n_chains``, ``n_per_chain``, the acceptance (``mean``,
        ``per_chain``, ...), initial and final step sizes per chain, the integrated
        autocorrelation time of the energy (in kept samples and in steps), the energy's
        ESS and split R-hat across chains, the wall time, the number of energy and
        gradient evaluations and the settings.

    Examples
    --------
    >>> import physsample as ps  # doctest: +SKIP
    >>> system = ps.systems.get("mw5", delta=1.5)  # doctest: +SKIP
    >>> out = ps.mcmc.mala(system, system.modes[:8], n_steps=2_000, seed=0)  # doctest: +SKIP
    >>> out.metadata["acceptance"]["mean"]  # doctest: +SKIP
    0.57...
    """
    if not isinstance(system, System):
        raise ConfigError(f"mala: system must be a physsample System, got {type(system).__name__}")
    return run_chains(
        system,
        x0,
        build_kernel(system),
        init,
        method="mala",
        n_steps=n_steps,
        n_warmup=n_warmup,
        thin=thin,
        step_size=step_size,
        target_accept=target_accept,
        step_grid=np.logspace(-6.0, 2.0, 17),
        evals_per_step=1,
        seed=seed,
        generator=generator,
        progress=progress,
        settings={},
    )
