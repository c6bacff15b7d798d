"""DIS, the time-reversed diffusion sampler with a variance-preserving Gaussian reference.

The reference is the VP Ornstein-Uhlenbeck process with beta linear in time
(:class:`~physsample.diffusion.LinearVPSchedule`), stationary at N(0, sigma^2), which is
the prior. The control is the network alone (``base_control = 0``): the network learns
the correction to the reference's score that the target needs. Berner, Richter &
Ullrich, "An optimal control perspective on diffusion-based generative modeling", 2022.
"""

from __future__ import annotations

from physsample.diffusion import GaussianReference, LinearVPSchedule
from physsample.methods.base import DiffusionSampler

__all__ = ["DIS"]


class DIS(DiffusionSampler):
    """Time-reversed diffusion sampler.

    Parameters
    ----------
    system
        The target.
    sigma
        Standard deviation of the prior N(0, sigma^2).
    beta_min, beta_max
        Noise rates at the target and prior ends (1/time).
    horizon
        T.
    **options
        Shared options of :class:`~physsample.methods.base.DiffusionSampler`.
    """

    method_name = "dis"

    def __init__(
        self,
        system,
        *,
        sigma: float = 1.0,
        beta_min: float = 0.1,
        beta_max: float = 10.0,
        horizon: float = 1.0,
        **options,
    ) -> None:
        self.method_settings = {
            "beta_min": float(beta_min),
            "beta_max": float(beta_max),
            "horizon": float(horizon),
            "sigma": float(sigma),
        }
        super().__init__(system, **options)

    def build_reference(self) -> GaussianReference:
        return GaussianReference(LinearVPSchedule(**self.method_settings), self.space)
