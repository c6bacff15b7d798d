"""DDS, the denoising diffusion sampler: a stationary OU reference from N(0, sigma^2).

The reference is the Ornstein-Uhlenbeck process dY = -beta/2 Y dtau + sigma sqrt(beta) dW
with constant beta (:class:`~physsample.diffusion.ConstantOUSchedule`), stationary at
N(0, sigma^2): the prior, and the law of the untrained sampler at every time. The
control is the network alone (``base_control = 0``). Vargas, Grathwohl & Doucet,
"Denoising Diffusion Samplers", ICLR 2023 (their rate lambda is beta / 2 here).
"""

from __future__ import annotations

from physsample.diffusion import ConstantOUSchedule, GaussianReference
from physsample.methods.base import DiffusionSampler

__all__ = ["DDS"]


class DDS(DiffusionSampler):
    """Denoising diffusion sampler.

    Parameters
    ----------
    system
        The target.
    sigma
        Standard deviation of the prior N(0, sigma^2) (the system's length unit).
    beta
        Constant noise rate (1/time).
    horizon
        T.
    **options
        Shared options of :class:`~physsample.methods.base.DiffusionSampler`.
    """

    method_name = "dds"

    def __init__(
        self,
        system,
        *,
        sigma: float = 1.0,
        beta: float = 4.0,
        horizon: float = 1.0,
        **options,
    ) -> None:
        self.method_settings = {
            "sigma": float(sigma),
            "beta": float(beta),
            "horizon": float(horizon),
        }
        super().__init__(system, **options)

    def build_reference(self) -> GaussianReference:
        return GaussianReference(ConstantOUSchedule(**self.method_settings), self.space)
