"""Multi double well of Richter and Berner: m double wells and d - m Gaussian coordinates.

E(x) = sum_{i <= m} (x_i^2 - delta)^2 + 0.5 sum_{i > m} x_i^2, in kT. The first m
coordinates each have two wells at ±sqrt(delta), so the target has 2^m modes. The
normaliser factorises into m one-dimensional double-well integrals (by quadrature)
and d - m Gaussian ones.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from physsample.errors import ConfigError
from physsample.systems.base import System
from physsample.systems.one_dim import PolynomialWell, product_grid, sampling_device

__all__ = ["MultiDoubleWell"]

_MAX_MODES = 4096


class MultiDoubleWell(System):
    """Product of ``n_wells`` quartic double wells and ``dim - n_wells`` standard Gaussians.

    Parameters
    ----------
    dim
        Number of coordinates d.
    n_wells
        Number m of double-well coordinates, 1 <= m <= d; they come first.
    delta
        Well position parameter, > 0: the wells sit at ±sqrt(delta) with a barrier of
        height delta^2 (kT) between them.

    Attributes
    ----------
    log_z : float
        Exact log normaliser, m log Z_dw + (d - m) 0.5 log 2 pi, Z_dw by quadrature.
    modes : torch.Tensor or None
        The 2^m sign combinations of ±sqrt(delta) in the first m coordinates, zeros
        elsewhere, shape (2^m, d), float64; ``None`` when 2^m > 4096.

    Examples
    --------
    >>> system = MultiDoubleWell(dim=5, n_wells=5, delta=4.0)
    >>> system.modes.shape
    torch.Size([32, 5])
    """

    name = "multi_double_well"

    def __init__(self, dim: int, n_wells: int, delta: float) -> None:
        super().__init__(dim)
        if not 1 <= int(n_wells) <= self.dim:
            raise ConfigError(
                f"MultiDoubleWell: need 1 <= n_wells <= dim={self.dim}, got {n_wells}"
            )
        if not float(delta) > 0:
            raise ConfigError(f"MultiDoubleWell: delta must be positive, got {delta}")
        self.n_wells, self.delta = int(n_wells), float(delta)
        self.well = PolynomialWell([self.delta**2, 0.0, -2.0 * self.delta, 0.0, 1.0])
        n_gauss = self.dim - self.n_wells
        self.log_z = self.n_wells * self.well.log_z + 0.5 * n_gauss * math.log(2.0 * math.pi)
        self.register_buffer("modes", self._mode_grid())

    def _mode_grid(self) -> torch.Tensor | None:
        if 2**self.n_wells > _MAX_MODES:
            return None
        root = math.sqrt(self.delta)
        signs = product_grid([-root, root], self.n_wells)
        modes = torch.zeros(signs.shape[0], self.dim, dtype=torch.float64)
        modes[:, : self.n_wells] = signs
        return modes

    def _energy(self, x: torch.Tensor) -> torch.Tensor:
        wells, rest = x[:, : self.n_wells], x[:, self.n_wells :]
        # (x^2 - delta)^2 directly, not the expanded polynomial: no cancellation in float32
        return ((wells * wells - self.delta) ** 2).sum(dim=1) + 0.5 * (rest * rest).sum(dim=1)

    def _sample_exact(self, n: int, generator: torch.Generator | None) -> torch.Tensor:
        dev = sampling_device(generator, self.device)
        m = self.n_wells
        wells = self.well.sample(n * m, generator, dev).reshape(n, m)
        rest = torch.randn(n, self.dim - m, dtype=torch.float64, device=dev, generator=generator)
        return torch.cat([wells, rest], dim=1).to(self.device)

    def summary(self) -> dict[str, Any]:
        out = super().summary()
        out.update(n_wells=self.n_wells, delta=self.delta, n_modes=2**self.n_wells)
        return out
