"""PIS, the path integral sampler: Brownian motion from a point, controlled to the target.

The reference is dX = sigma dW started at X_0 = 0
(:class:`~physsample.diffusion.PinnedBrownianSchedule`); its law at T is N(0, sigma^2 T).
The control is the network alone (``base_control = 0``), so the untrained sampler draws
N(0, sigma^2 T) and its path weight is pi~(x_T) / N(x_T; 0, sigma^2 T) exactly (the
Brownian bridges cancel). Zhang & Chen, "Path Integral Sampler", ICLR 2022.
"""

from __future__ import annotations

from physsample.diffusion import GaussianReference, PinnedBrownianSchedule
from physsample.methods.base import DiffusionSampler

__all__ = ["PIS"]


class PIS(DiffusionSampler):
    """Path integral sampler.

    Parameters
    ----------
    system
        The target.
    sigma
        Diffusion coefficient of the reference Brownian motion (length / sqrt(time));
        the untrained sampler's output is N(0, sigma^2 horizon).
    horizon
        T.
    **options
        Shared options of :class:`~physsample.methods.base.DiffusionSampler`.

    Examples
    --------
    >>> import physsample as ps                                    # doctest: +SKIP
    >>> sampler = PIS(ps.systems.get("gmm25"), sigma=5.0).fit(500)  # doctest: +SKIP
    """

    method_name = "pis"

    def __init__(self, system, *, sigma: float = 1.0, horizon: float = 1.0, **options) -> None:
        self.method_settings = {"sigma": float(sigma), "horizon": float(horizon)}
        super().__init__(system, **options)

    def build_reference(self) -> GaussianReference:
        return GaussianReference(PinnedBrownianSchedule(**self.method_settings), self.space)
