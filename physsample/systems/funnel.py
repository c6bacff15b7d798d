"""Neal's funnel: a normalised density with a scale that varies over orders of magnitude.

x_0 ~ N(0, scale^2) and, given x_0, x_i ~ N(0, exp(x_0)) independently for
i = 1, ..., dim - 1. ``log_z = 0`` and energy(x) = -log p(x) in kT:

E(x) = x_0^2 / (2 scale^2) + 0.5 log(2 pi scale^2)
       + sum_{i >= 1} [x_i^2 exp(-x_0) / 2 + x_0 / 2 + 0.5 log(2 pi)].
"""

from __future__ import annotations

import math

import torch

from physsample.errors import ConfigError
from physsample.systems.base import System
from physsample.systems.one_dim import sampling_device

__all__ = ["Funnel"]


class Funnel(System):
    """Neal's funnel in ``dim`` dimensions.

    Parameters
    ----------
    dim
        Number of coordinates, >= 2: the log-variance coordinate x_0 and dim - 1 others.
    scale
        Standard deviation of x_0, > 0.

    Attributes
    ----------
    log_z : float
        0.0: the density is normalised.
    modes : None
        The funnel has no isolated modes.

    Examples
    --------
    >>> funnel = Funnel(dim=10)
    >>> funnel.sample_exact(5, torch.Generator().manual_seed(0)).shape
    torch.Size([5, 10])
    """

    name = "funnel"
    log_z = 0.0
    modes = None

    def __init__(self, dim: int = 10, scale: float = 3.0) -> None:
        if int(dim) < 2:
            raise ConfigError(f"Funnel: dim must be at least 2, got {dim}")
        if not float(scale) > 0:
            raise ConfigError(f"Funnel: scale must be positive, got {scale}")
        super().__init__(int(dim))
        self.scale = float(scale)

    def _energy(self, x: torch.Tensor) -> torch.Tensor:
        x0, rest = x[:, 0], x[:, 1:]
        n = self.dim - 1
        e0 = 0.5 * (x0 / self.scale) ** 2 + 0.5 * math.log(2.0 * math.pi * self.scale**2)
        e_rest = 0.5 * (rest * rest).sum(dim=1) * torch.exp(-x0) + 0.5 * n * x0
        return e0 + e_rest + 0.5 * n * math.log(2.0 * math.pi)

    def _sample_exact(self, n: int, generator: torch.Generator | None) -> torch.Tensor:
        dev = sampling_device(generator, self.device)
        eps = torch.randn(n, self.dim, dtype=torch.float64, device=dev, generator=generator)
        x0 = self.scale * eps[:, :1]
        return torch.cat([x0, torch.exp(0.5 * x0) * eps[:, 1:]], dim=1).to(self.device)
