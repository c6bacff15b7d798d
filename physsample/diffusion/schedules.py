"""Noise schedules of the reference (noising) process, in generative time.

Time convention
---------------
Every function here takes **generative time** ``t`` in [0, T] (``T = horizon``): the
sampler starts from its prior at t = 0 and reaches the target at t = T. The reference
(noising) process runs the other way, from the target at t = T to the prior at t = 0;
its own clock is the noising time tau = T - t.

A schedule describes two things.

- The **generative SDE** family it supports, with a control ``u``:

      dX_t = [lambda(t) X_t + g(t)^2 u(t, X_t)] dt + g(t) dW_t,

  where ``lambda`` is :meth:`Schedule.drift_coefficient` and ``g^2`` is
  :meth:`Schedule.diffusion_squared`. With ``u = 0`` this is the uncontrolled
  reference run forward in generative time (the stationary OU, or Brownian motion
  from 0). The control is in *score units*: for an OU reference, the exact time
  reversal of the noising process started at t = T from a law p (marginals p_t) has
  ``u = grad log p_t(x) + x / sigma^2`` (see :mod:`physsample.diffusion.references`).
- The **exact noising transitions** of the reference, ``X_s | X_t = y`` for s < t
  (:meth:`Schedule.noising`), Gaussian with mean ``a * y`` and isotropic variance ``v``.

Schedules
---------
- :class:`LinearVPSchedule`: variance-preserving Ornstein-Uhlenbeck (OU) process
  d Y = -beta/2 Y dtau + sigma sqrt(beta) dW, with beta linear in the noising time
  (beta_min at the target, beta_max at the prior), as in DDPM / DIS. Stationary law
  N(0, sigma^2).
- :class:`ConstantOUSchedule`: the same OU with constant beta (DDS; DDS's rate
  ``lambda`` in ``dY = -lambda Y + sigma sqrt(2 lambda) dW`` is ``beta / 2`` here).
- :class:`PinnedBrownianSchedule`: Brownian motion ``dX = sigma dW`` started at 0 (PIS);
  its noising transitions are Brownian bridges pinned at 0 at t = 0.

All methods are elementwise in ``t`` and return tensors of ``t``'s dtype and device.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import NamedTuple

import torch

from physsample.errors import ConfigError

__all__ = [
    "Schedule",
    "OUSchedule",
    "LinearVPSchedule",
    "ConstantOUSchedule",
    "PinnedBrownianSchedule",
    "NoisingTransition",
    "ExactStep",
]


class NoisingTransition(NamedTuple):
    """Reference transition X_s | X_t = y ~ N(mean_factor * y, variance * I)."""

    mean_factor: torch.Tensor
    variance: torch.Tensor


class ExactStep(NamedTuple):
    """Exact solution over [s, t] of the generative SDE with the control frozen at u.

    X_t | X_s = x ~ N(state_factor * x + control_factor * u, variance * I).
    """

    state_factor: torch.Tensor
    control_factor: torch.Tensor
    variance: torch.Tensor


def _positive(name: str, value: float) -> float:
    value = float(value)
    if not value > 0.0 or value == float("inf"):
        raise ConfigError(f"{name} must be positive and finite, got {value}")
    return value


class Schedule(ABC):
    """A reference process on [0, horizon] in generative time (see module docstring).

    Attributes
    ----------
    horizon : float
        T, the generative end time.
    sigma : float
        Scale of the reference: stationary standard deviation (OU) or diffusion
        coefficient (Brownian motion), in the system's length unit.
    pinned : bool
        True when the reference's law at t = 0 is a delta at the origin (PIS).
    """

    horizon: float
    sigma: float
    pinned: bool = False

    @abstractmethod
    def drift_coefficient(self, t: torch.Tensor) -> torch.Tensor:
        """lambda(t), the linear drift of the uncontrolled generative SDE (1/time)."""

    @abstractmethod
    def diffusion_squared(self, t: torch.Tensor) -> torch.Tensor:
        """g(t)^2, the squared diffusion coefficient (length^2 / time)."""

    @abstractmethod
    def noising(self, t: torch.Tensor, s: torch.Tensor) -> NoisingTransition:
        """Exact reference transition from generative time ``t`` down to ``s <= t``."""

    @abstractmethod
    def exact_step(self, s: torch.Tensor, t: torch.Tensor) -> ExactStep:
        """Factors of the exact generative step from ``s`` to ``t >= s`` with u frozen."""

    @abstractmethod
    def reference_variance(self, t: torch.Tensor) -> torch.Tensor:
        """Variance per coordinate of the reference's own marginal at time ``t``.

        sigma^2 for the stationary OU, sigma^2 t for Brownian motion from 0.
        """


class OUSchedule(Schedule):
    """Ornstein-Uhlenbeck reference dY = -beta/2 Y dtau + sigma sqrt(beta) dW.

    In generative time the uncontrolled SDE is dX = -beta/2 X dt + sigma sqrt(beta) dW
    (the stationary OU is reversible), so ``lambda = -beta/2`` and
    ``g^2 = sigma^2 beta``. Subclasses give ``beta(t)`` and its integral.
    """

    def __init__(self, sigma: float, horizon: float) -> None:
        self.sigma = _positive("sigma", sigma)
        self.horizon = _positive("horizon", horizon)

    @abstractmethod
    def beta(self, t: torch.Tensor) -> torch.Tensor:
        """beta at generative time ``t`` (1/time)."""

    @abstractmethod
    def integral_beta(self, s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Closed-form integral of beta over generative times [s, t]."""

    def drift_coefficient(self, t: torch.Tensor) -> torch.Tensor:
        return -0.5 * self.beta(t)

    def diffusion_squared(self, t: torch.Tensor) -> torch.Tensor:
        return self.sigma**2 * self.beta(t)

    def noising(self, t: torch.Tensor, s: torch.Tensor) -> NoisingTransition:
        """a = exp(-B/2), v = sigma^2 (1 - a^2) with B = integral of beta over [s, t]."""
        b = self.integral_beta(s, t)
        return NoisingTransition(torch.exp(-0.5 * b), -(self.sigma**2) * torch.expm1(-b))

    def exact_step(self, s: torch.Tensor, t: torch.Tensor) -> ExactStep:
        """a = exp(-B/2); control factor 2 sigma^2 (1 - a); variance sigma^2 (1 - a^2)."""
        b = self.integral_beta(s, t)
        var = self.sigma**2
        return ExactStep(
            torch.exp(-0.5 * b), -2.0 * var * torch.expm1(-0.5 * b), -var * torch.expm1(-b)
        )

    def reference_variance(self, t: torch.Tensor) -> torch.Tensor:
        return torch.full_like(t, self.sigma**2)


class LinearVPSchedule(OUSchedule):
    """Variance-preserving OU with beta linear in the noising time (DDPM, DIS).

    beta(t) = beta_max + (beta_min - beta_max) t / T: beta_max at the prior (t = 0),
    beta_min at the target (t = T).

    Parameters
    ----------
    beta_min, beta_max
        Noise rates at the target and prior ends (1/time), 0 < beta_min <= beta_max.
    horizon
        T.
    sigma
        Stationary standard deviation (1 for the usual VP process).

    Examples
    --------
    >>> sched = LinearVPSchedule(0.1, 10.0)
    >>> a, v = sched.noising(torch.tensor(1.0), torch.tensor(0.0))
    >>> bool(torch.isclose(a**2 + v, torch.tensor(1.0)))
    True
    """

    def __init__(
        self,
        beta_min: float = 0.1,
        beta_max: float = 10.0,
        horizon: float = 1.0,
        sigma: float = 1.0,
    ) -> None:
        super().__init__(sigma, horizon)
        self.beta_min = _positive("beta_min", beta_min)
        self.beta_max = _positive("beta_max", beta_max)
        if self.beta_max < self.beta_min:
            raise ConfigError(f"need beta_min <= beta_max, got {beta_min} > {beta_max}")

    def beta(self, t: torch.Tensor) -> torch.Tensor:
        return self.beta_max + (self.beta_min - self.beta_max) * t / self.horizon

    def integral_beta(self, s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        slope = (self.beta_min - self.beta_max) / self.horizon
        return self.beta_max * (t - s) + 0.5 * slope * (t - s) * (t + s)

    def __repr__(self) -> str:
        return (
            f"LinearVPSchedule(beta_min={self.beta_min}, beta_max={self.beta_max}, "
            f"horizon={self.horizon}, sigma={self.sigma})"
        )


class ConstantOUSchedule(OUSchedule):
    """OU reference with constant beta and stationary scale sigma (DDS).

    Parameters
    ----------
    beta
        Constant noise rate (1/time); DDS's lambda is beta / 2.
    sigma
        Prior / stationary standard deviation.
    horizon
        T.
    """

    def __init__(self, beta: float = 4.0, sigma: float = 1.0, horizon: float = 1.0) -> None:
        super().__init__(sigma, horizon)
        self.beta_value = _positive("beta", beta)

    def beta(self, t: torch.Tensor) -> torch.Tensor:
        return torch.full_like(t, self.beta_value)

    def integral_beta(self, s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.beta_value * (t - s)

    def __repr__(self) -> str:
        return (
            f"ConstantOUSchedule(beta={self.beta_value}, sigma={self.sigma}, "
            f"horizon={self.horizon})"
        )


class PinnedBrownianSchedule(Schedule):
    """Brownian motion dX = sigma dW from X_0 = 0 (PIS).

    The uncontrolled generative SDE has ``lambda = 0`` and ``g^2 = sigma^2``; its marginal
    at t is N(0, sigma^2 t). The noising transitions are the Brownian bridges to the
    origin at t = 0: X_s | X_t = y ~ N((s/t) y, sigma^2 s (t - s) / t); at s = 0 this is
    the delta at 0 (mean factor and variance 0), which path weights drop explicitly.

    Parameters
    ----------
    sigma
        Diffusion coefficient (length / sqrt(time)).
    horizon
        T.
    """

    pinned = True

    def __init__(self, sigma: float = 1.0, horizon: float = 1.0) -> None:
        self.sigma = _positive("sigma", sigma)
        self.horizon = _positive("horizon", horizon)

    def drift_coefficient(self, t: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(t)

    def diffusion_squared(self, t: torch.Tensor) -> torch.Tensor:
        return torch.full_like(t, self.sigma**2)

    def noising(self, t: torch.Tensor, s: torch.Tensor) -> NoisingTransition:
        return NoisingTransition(s / t, self.sigma**2 * s * (t - s) / t)

    def exact_step(self, s: torch.Tensor, t: torch.Tensor) -> ExactStep:
        dt = t - s
        return ExactStep(torch.ones_like(dt), self.sigma**2 * dt, self.sigma**2 * dt)

    def reference_variance(self, t: torch.Tensor) -> torch.Tensor:
        return self.sigma**2 * t

    def __repr__(self) -> str:
        return f"PinnedBrownianSchedule(sigma={self.sigma}, horizon={self.horizon})"
