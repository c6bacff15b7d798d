"""Gaussian mixtures: a general diagonal mixture and the two benchmark instances.

The density is normalised, so ``log_z = 0`` and energy(x) = -log p(x) =
-logsumexp_k [log w_k + log N(x; mu_k, diag(sigma_k^2))]. Positions and means share one
length unit; variances are in that unit squared.

- ``gmm25`` (:class:`GridGMM`): 25 equal-weight Gaussians in 2-D on the grid
  {-10, -5, 0, 5, 10}^2, variance 0.3.
- ``gmm40`` (:class:`RandomGMM`): 40 equal-weight unit-variance Gaussians whose means
  are uniform in [-40, 40]^dim, drawn from a fixed seed.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from physsample.errors import ConfigError, ShapeError
from physsample.systems.base import System
from physsample.systems.one_dim import product_grid, sampling_device

__all__ = ["Mixture", "GaussianMixture", "GridGMM", "RandomGMM", "random_means"]


def random_means(n: int, dim: int, box: float, seed: int) -> torch.Tensor:
    """Means uniform in [-box, box]^dim from a generator seeded with ``seed``.

    The uniforms are drawn in float32, as ``(torch.rand((n, dim)) - 0.5) * 2 * box``
    after ``torch.manual_seed(seed)``, so every user (and every earlier torch code
    written that way) gets the same target.

    Returns
    -------
    torch.Tensor
        Shape (n, dim), float64, on the CPU.
    """
    generator = torch.Generator().manual_seed(int(seed))
    u = torch.rand((int(n), int(dim)), generator=generator)
    return ((u - 0.5) * 2 * float(box)).double()


class Mixture(System):
    """Normalised mixture of product densities; subclasses give the components.

    Parameters
    ----------
    means
        Component centres, shape (n_components, dim).
    weights
        Mixture weights, shape (n_components,), positive; normalised here. ``None``
        means equal weights.

    Attributes
    ----------
    modes : torch.Tensor
        The component centres, shape (n_components, dim).
    log_z : float
        0.0: the density is normalised.
    """

    log_z = 0.0

    def __init__(self, means: torch.Tensor, weights: torch.Tensor | None = None) -> None:
        means = torch.as_tensor(means, dtype=torch.float64)
        if means.ndim != 2 or means.shape[0] < 1:
            raise ShapeError(
                f"{type(self).__name__}: means must have shape (n_components, dim), "
                f"got {tuple(means.shape)}"
            )
        super().__init__(means.shape[1])
        k = means.shape[0]
        w = torch.ones(k, dtype=torch.float64) if weights is None else torch.as_tensor(weights)
        w = w.to(torch.float64)
        if w.shape != (k,):
            raise ShapeError(
                f"{type(self).__name__}: weights must have shape ({k},), got {tuple(w.shape)}"
            )
        if not bool(torch.all(w > 0)) or not bool(torch.all(torch.isfinite(w))):
            raise ConfigError(f"{type(self).__name__}: weights must be positive and finite")
        self.register_buffer("means", means.clone())
        self.register_buffer("log_weights", torch.log(w / w.sum()))

    @property
    def n_components(self) -> int:
        return self.means.shape[0]

    @property
    def modes(self) -> torch.Tensor:
        return self.means

    def _component_log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """log density of every component at ``x`` (batch, dim); returns (batch, n_components)."""
        raise NotImplementedError

    def _component_sample(
        self, index: torch.Tensor, generator: torch.Generator | None
    ) -> torch.Tensor:
        """One float64 draw from component ``index[i]`` per row, on ``index``'s device."""
        raise NotImplementedError

    def _energy(self, x: torch.Tensor) -> torch.Tensor:
        log_w = self.log_weights.to(x.dtype)
        return -torch.logsumexp(self._component_log_prob(x) + log_w, dim=1)

    def _sample_exact(self, n: int, generator: torch.Generator | None) -> torch.Tensor:
        dev = sampling_device(generator, self.device)
        probs = self.log_weights.to(device=dev, dtype=torch.float64).exp()
        if n == 0:
            index = torch.zeros(0, dtype=torch.long, device=dev)
        else:
            index = torch.multinomial(probs, n, replacement=True, generator=generator)
        return self._component_sample(index, generator).to(self.device)

    def summary(self) -> dict[str, Any]:
        out = super().summary()
        out["n_modes"] = self.n_components
        return out


class GaussianMixture(Mixture):
    """Mixture of Gaussians with isotropic or diagonal covariances.

    Parameters
    ----------
    means
        Shape (n_components, dim).
    variances
        A float (same isotropic variance for all), shape (n_components,) (isotropic per
        component) or (n_components, dim) (diagonal); positive, length unit squared.
    weights
        Shape (n_components,), positive, normalised here; ``None`` for equal weights.

    Examples
    --------
    >>> gmm = GaussianMixture(torch.tensor([[-2.0], [2.0]]), 0.5)
    >>> gmm.sample_exact(3, torch.Generator().manual_seed(0)).shape
    torch.Size([3, 1])
    """

    name = "gaussian_mixture"

    def __init__(
        self,
        means: torch.Tensor,
        variances: float | torch.Tensor,
        weights: torch.Tensor | None = None,
    ) -> None:
        super().__init__(means, weights)
        var = _diagonal_variances(variances, self.n_components, self.dim, type(self).__name__)
        self.register_buffer("variances", var)

    def _component_log_prob(self, x: torch.Tensor) -> torch.Tensor:
        mu, var = self.means.to(x.dtype), self.variances.to(x.dtype)
        diff = x[:, None, :] - mu[None]
        quad = (diff * diff / var).sum(dim=2)
        return -0.5 * (quad + torch.log(2.0 * math.pi * var).sum(dim=1))

    def _component_sample(
        self, index: torch.Tensor, generator: torch.Generator | None
    ) -> torch.Tensor:
        dev, f64 = index.device, torch.float64
        eps = torch.randn(index.shape[0], self.dim, dtype=f64, device=dev, generator=generator)
        mu, var = self.means.to(dev, f64), self.variances.to(dev, f64)
        return mu[index] + var[index].sqrt() * eps


def _diagonal_variances(
    variances: float | torch.Tensor, k: int, dim: int, owner: str
) -> torch.Tensor:
    """Variances as a (k, dim) float64 tensor, from a float, (k,) or (k, dim)."""
    var = torch.as_tensor(variances, dtype=torch.float64)
    if var.ndim == 0:
        var = var.expand(k, dim)
    elif var.shape == (k,):
        var = var[:, None].expand(k, dim)
    elif var.shape != (k, dim):
        raise ShapeError(
            f"{owner}: variances must be a float or have shape ({k},) or ({k}, {dim}); "
            f"got {tuple(var.shape)}"
        )
    if not bool(torch.all(var > 0)) or not bool(torch.all(torch.isfinite(var))):
        raise ConfigError(f"{owner}: variances must be positive and finite")
    return var.clone()


class GridGMM(GaussianMixture):
    """``gmm25``: 25 equal-weight 2-D Gaussians on {-10, -5, 0, 5, 10}^2, variance 0.3."""

    name = "gmm25"

    def __init__(self) -> None:
        means = product_grid([-10.0, -5.0, 0.0, 5.0, 10.0], 2)
        super().__init__(means, 0.3)


class RandomGMM(GaussianMixture):
    """``gmm40``: equal-weight Gaussians with seeded random means.

    Parameters
    ----------
    dim
        Dimension.
    n_modes
        Number of components.
    box
        Means are uniform in [-box, box]^dim (see :func:`random_means`).
    seed
        Seed of the means; the same seed gives the same target.
    variance
        Isotropic variance of every component.
    """

    name = "gmm40"

    def __init__(
        self,
        dim: int = 2,
        n_modes: int = 40,
        box: float = 40.0,
        seed: int = 0,
        variance: float = 1.0,
    ) -> None:
        if int(dim) < 1 or int(n_modes) < 1:
            raise ConfigError(f"RandomGMM: dim and n_modes must be positive, got {dim}, {n_modes}")
        super().__init__(random_means(n_modes, dim, box, seed), float(variance))
        self.box, self.seed = float(box), int(seed)
