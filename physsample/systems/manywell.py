"""Manywell: d/2 independent copies of a 2-D asymmetric double well.

E(x) = sum over coordinate pairs (x1, x2) = (x[0], x[1]), (x[2], x[3]), ... of
x1^4 - 6 x1^2 - 0.5 x1 + 0.5 x2^2, in kT. Each pair has two wells (x1 ≈ -1.71 and
x1 ≈ 1.75), so the target has 2^(d/2) modes. The normaliser factorises:
log Z = (d/2) (log Z1 + 0.5 log 2 pi) with Z1 = ∫ exp(-(x^4 - 6 x^2 - 0.5 x)) dx
≈ 11784.50927.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from physsample.errors import ConfigError
from physsample.systems.base import System
from physsample.systems.one_dim import PolynomialWell, product_grid, sampling_device

__all__ = ["Manywell", "DOUBLE_WELL_COEFFS"]

#: u(x) = x^4 - 6 x^2 - 0.5 x, lowest power first.
DOUBLE_WELL_COEFFS = (0.0, -0.5, -6.0, 0.0, 1.0)
_MAX_MODE_DIM = 24  # list the 2^(d/2) modes only up to 4096 of them


class Manywell(System):
    """The Manywell target in ``dim`` (even) dimensions.

    Parameters
    ----------
    dim
        Number of coordinates, even; ``dim // 2`` double-well pairs.

    Attributes
    ----------
    log_z : float
        Exact log normaliser, (dim/2) (log Z1 + 0.5 log 2 pi).
    modes : torch.Tensor or None
        The 2^(dim/2) well bottoms, shape (2^(dim/2), dim), float64: x1 at a minimum of
        the 1-D double well, x2 = 0 in every pair; ``None`` when dim > 24.

    Examples
    --------
    >>> system = Manywell(32)
    >>> x = system.sample_exact(4, torch.Generator().manual_seed(0))
    >>> system.energy(x).shape
    torch.Size([4])
    """

    name = "manywell"

    def __init__(self, dim: int) -> None:
        if int(dim) < 2 or int(dim) % 2:
            raise ConfigError(f"Manywell: dim must be a positive even number, got {dim}")
        super().__init__(int(dim))
        self.n_pairs = self.dim // 2
        self.well = PolynomialWell(DOUBLE_WELL_COEFFS)
        self.log_z = self.n_pairs * (self.well.log_z + 0.5 * math.log(2.0 * math.pi))
        self.register_buffer("modes", self._mode_grid())

    def _mode_grid(self) -> torch.Tensor | None:
        if self.dim > _MAX_MODE_DIM:
            return None
        wells = product_grid(self.well.minima.tolist(), self.n_pairs)
        modes = torch.zeros(wells.shape[0], self.dim, dtype=torch.float64)
        modes[:, 0::2] = wells
        return modes

    def random_wells(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` well bottoms with an independent uniformly chosen well in every pair.

        Chain starting points when there are too many modes to list (``modes`` is None);
        shape (n, dim), float64, on the CPU.
        """
        minima = self.well.minima.to("cpu", torch.float64)
        pick = torch.randint(len(minima), (int(n), self.n_pairs), generator=generator)
        x = torch.zeros(int(n), self.dim, dtype=torch.float64)
        x[:, 0::2] = minima[pick]
        return x

    def _energy(self, x: torch.Tensor) -> torch.Tensor:
        x1, x2 = x[:, 0::2], x[:, 1::2]
        return self.well(x1).sum(dim=1) + 0.5 * (x2 * x2).sum(dim=1)

    def _sample_exact(self, n: int, generator: torch.Generator | None) -> torch.Tensor:
        dev = sampling_device(generator, self.device)
        x1 = self.well.sample(n * self.n_pairs, generator, dev).reshape(n, self.n_pairs)
        x2 = torch.randn(n, self.n_pairs, dtype=torch.float64, device=dev, generator=generator)
        return torch.stack([x1, x2], dim=2).reshape(n, self.dim).to(self.device)

    def summary(self) -> dict[str, Any]:
        out = super().summary()
        out["n_modes"] = 2**self.n_pairs
        return out
