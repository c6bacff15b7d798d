"""Mixture of Student-t products (``mos``): heavy-tailed, multi-modal, normalised.

Each of the equal-weight components is a product of independent unit-scale univariate
Student-t densities with ``df`` degrees of freedom, centred at a mean drawn uniformly
in [-box, box]^dim from a fixed seed. ``log_z = 0`` and energy(x) = -log p(x) in kT.
"""

from __future__ import annotations

import math

import torch

from physsample.errors import ConfigError
from physsample.systems.gaussian_mixture import Mixture, random_means

__all__ = ["StudentTMixture", "student_t"]


def student_t(
    shape: tuple[int, ...], df: float, generator: torch.Generator | None, device: torch.device
) -> torch.Tensor:
    """Standard Student-t draws by Bailey's polar method (exact; uses only uniforms).

    With (U, V) uniform on the unit disc and W = U^2 + V^2, the variable
    U sqrt(df (W^(-2/df) - 1) / W) has the Student-t law with ``df`` degrees of freedom.

    Returns
    -------
    torch.Tensor
        Shape ``shape``, float64, on ``device``.
    """
    n = math.prod(shape)
    out: list[torch.Tensor] = []
    count = 0
    while count < n:
        batch = int(1.35 * (n - count)) + 16  # the disc covers pi/4 of the square
        u, v = (
            2.0 * torch.rand(2, batch, dtype=torch.float64, device=device, generator=generator) - 1
        )
        w = u * u + v * v
        keep = (w > 0) & (w <= 1)
        u, w = u[keep], w[keep]
        out.append(u * torch.sqrt(df * (w.pow(-2.0 / df) - 1.0) / w))
        count += out[-1].shape[0]
    flat = torch.cat(out)[:n] if out else torch.zeros(0, dtype=torch.float64, device=device)
    return flat.reshape(shape)


class StudentTMixture(Mixture):
    """Equal-weight mixture of products of unit-scale Student-t densities.

    Parameters
    ----------
    dim
        Dimension.
    n_components
        Number of components (modes).
    df
        Degrees of freedom of every univariate factor, > 0.
    box
        Means are uniform in [-box, box]^dim (see
        :func:`physsample.systems.gaussian_mixture.random_means`).
    seed
        Seed of the means; the same seed gives the same target.

    Examples
    --------
    >>> mos = StudentTMixture(dim=2)
    >>> mos.modes.shape
    torch.Size([10, 2])
    """

    name = "mos"

    def __init__(
        self,
        dim: int = 2,
        n_components: int = 10,
        df: float = 2.0,
        box: float = 10.0,
        seed: int = 0,
    ) -> None:
        if int(dim) < 1 or int(n_components) < 1:
            raise ConfigError(
                f"StudentTMixture: dim and n_components must be positive, got {dim}, {n_components}"
            )
        if not float(df) > 0:
            raise ConfigError(f"StudentTMixture: df must be positive, got {df}")
        super().__init__(random_means(n_components, dim, box, seed))
        self.df, self.box, self.seed = float(df), float(box), int(seed)
        half = 0.5 * (self.df + 1.0)
        self._log_norm = (
            math.lgamma(half) - math.lgamma(0.5 * self.df) - 0.5 * math.log(self.df * math.pi)
        )

    def _component_log_prob(self, x: torch.Tensor) -> torch.Tensor:
        z = x[:, None, :] - self.means.to(x.dtype)[None]
        log_factor = self._log_norm - 0.5 * (self.df + 1.0) * torch.log1p(z * z / self.df)
        return log_factor.sum(dim=2)

    def _component_sample(
        self, index: torch.Tensor, generator: torch.Generator | None
    ) -> torch.Tensor:
        dev = index.device
        t = student_t((index.shape[0], self.dim), self.df, generator, dev)
        return self.means.to(dev, torch.float64)[index] + t
