"""Gaussian transitions of the discretised generative and noising processes.

On a grid t_0 = 0 < ... < t_N = T, the generative SDE of a schedule,

    dX = [lambda(t) X + g(t)^2 u(t, X)] dt + g(t) dW,

is discretised into Gaussian transitions

    F_k(x_{k+1} | x_k) = N(A_k x_k + C_k u(t_k, x_k), V_k I),

given here by their per-step factors (A_k, C_k, V_k):

- :func:`euler_maruyama`: A = 1 + lambda(t_k) dt, C = V = g(t_k)^2 dt;
- :func:`exponential_integrator`: the linear part solved exactly and u frozen at
  (t_k, x_k) over the step (for the VP-OU: A = a, C = 2 sigma^2 (1 - a), V = sigma^2
  (1 - a^2) with a = exp(-1/2 int beta); for Brownian motion it equals Euler-Maruyama
  with the exact variance).

The noising transitions are the schedule's exact reference transitions
B_k(x_k | x_{k+1}) = N(a_k x_{k+1}, v_k I) (:func:`noising_coefficients`).

Any Gaussian F and any normalised B give exact path importance weights; the
integrator only decides how close the untrained or trained sampler is to the
continuous-time process.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch

from physsample.diffusion.schedules import Schedule
from physsample.errors import ConfigError

__all__ = [
    "GenerativeCoefficients",
    "NoisingCoefficients",
    "euler_maruyama",
    "exponential_integrator",
    "noising_coefficients",
    "generative_coefficients",
    "INTEGRATORS",
]


class GenerativeCoefficients(NamedTuple):
    """Per-step factors of F_k = N(A_k x + C_k u, V_k I); each of shape (N,)."""

    state_factor: torch.Tensor
    control_factor: torch.Tensor
    variance: torch.Tensor


class NoisingCoefficients(NamedTuple):
    """Per-step factors of B_k(x_k | x_{k+1}) = N(a_k x_{k+1}, v_k I); each of shape (N,)."""

    mean_factor: torch.Tensor
    variance: torch.Tensor


def euler_maruyama(schedule: Schedule, grid: torch.Tensor) -> GenerativeCoefficients:
    """Euler-Maruyama factors, coefficients evaluated at the left end t_k.

    Parameters
    ----------
    schedule
        The reference schedule.
    grid
        Generative times, shape (N + 1,).
    """
    t, dt = grid[:-1], grid[1:] - grid[:-1]
    g2 = schedule.diffusion_squared(t)
    return GenerativeCoefficients(1.0 + schedule.drift_coefficient(t) * dt, g2 * dt, g2 * dt)


def exponential_integrator(schedule: Schedule, grid: torch.Tensor) -> GenerativeCoefficients:
    """Exponential-integrator factors: the linear drift and the noise integrated exactly.

    Parameters
    ----------
    schedule
        The reference schedule.
    grid
        Generative times, shape (N + 1,).
    """
    return GenerativeCoefficients(*schedule.exact_step(grid[:-1], grid[1:]))


def noising_coefficients(schedule: Schedule, grid: torch.Tensor) -> NoisingCoefficients:
    """Exact reference transitions from t_{k+1} down to t_k, shape (N,) each.

    For a pinned (PIS) schedule the first one (k = 0) is the delta at 0: both factors 0.
    """
    return NoisingCoefficients(*schedule.noising(grid[1:], grid[:-1]))


IntegratorFn = Callable[[Schedule, torch.Tensor], GenerativeCoefficients]

INTEGRATORS: dict[str, IntegratorFn] = {
    "euler_maruyama": euler_maruyama,
    "em": euler_maruyama,
    "exponential": exponential_integrator,
    "ei": exponential_integrator,
}


def generative_coefficients(
    integrator: str | IntegratorFn, schedule: Schedule, grid: torch.Tensor
) -> GenerativeCoefficients:
    """Factors of the integrator named ``integrator`` (see ``INTEGRATORS``) or given as a function.

    Raises
    ------
    ConfigError
        If the name is unknown.
    """
    if callable(integrator):
        return integrator(schedule, grid)
    try:
        fn = INTEGRATORS[str(integrator)]
    except KeyError:
        known = ", ".join(INTEGRATORS)
        raise ConfigError(f"unknown integrator {integrator!r}; use one of {known}") from None
    return fn(schedule, grid)
