"""Isotropic Gaussians on R^dim or on the centre-of-mass-free subspace.

A :class:`GaussianSpace` knows the space a sampler lives in. For a particle system
(``n_particles`` particles in ``spatial_dim`` dimensions, flat positions of size
``dim = n_particles * spatial_dim``) it is the centre-of-mass (CoM) free subspace
{x : sum_i x_i = 0} of dimension ``(n_particles - 1) * spatial_dim``: noise and
differences are projected onto it and Gaussian densities are normalised over it, with
respect to the Lebesgue measure of the subspace (orthonormal coordinates). Otherwise it
is all of R^dim and projection is the identity.
"""

from __future__ import annotations

import math

import torch

from physsample.errors import ConfigError, ShapeError

__all__ = ["GaussianSpace", "helmert_basis"]


def helmert_basis(n_particles: int, spatial_dim: int) -> torch.Tensor:
    """Orthonormal basis of the CoM-free subspace, shape (dim, (n_particles - 1) * spatial_dim).

    Column (j, b) is h_j (x) e_b, where h_j = (1, ..., 1, -j, 0, ..., 0) / sqrt(j (j + 1))
    has j leading ones (the Helmert contrasts) and e_b is a spatial unit vector.
    Float64 on the CPU.
    """
    n, d = int(n_particles), int(spatial_dim)
    h = torch.zeros(n, n - 1, dtype=torch.float64)
    for j in range(1, n):
        h[:j, j - 1] = 1.0
        h[j, j - 1] = -float(j)
        h[:, j - 1] /= math.sqrt(j * (j + 1))
    return torch.kron(h, torch.eye(d, dtype=torch.float64))


class GaussianSpace:
    """The space of a sampler: R^dim, or the CoM-free subspace of a particle system.

    Parameters
    ----------
    dim
        Size of a flat configuration.
    n_particles, spatial_dim
        Give both for a CoM-free particle space (``dim = n_particles * spatial_dim``);
        leave both None for R^dim.

    Attributes
    ----------
    dim : int
        Ambient (flat) dimension.
    effective_dim : int
        Dimension of the space: ``dim``, or ``(n_particles - 1) * spatial_dim``.
    com_free : bool
        Whether the space is CoM-free.

    Examples
    --------
    >>> space = GaussianSpace(6, n_particles=3, spatial_dim=2)
    >>> space.effective_dim
    4
    >>> x = space.noise(5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    >>> bool(torch.allclose(space.project(x), x))
    True
    """

    def __init__(
        self, dim: int, n_particles: int | None = None, spatial_dim: int | None = None
    ) -> None:
        self.dim = int(dim)
        self.com_free = n_particles is not None or spatial_dim is not None
        self.n_particles = None if n_particles is None else int(n_particles)
        self.spatial_dim = None if spatial_dim is None else int(spatial_dim)
        if self.com_free:
            if self.n_particles is None or self.spatial_dim is None:
                raise ConfigError(
                    "GaussianSpace: give both n_particles and spatial_dim, or neither"
                )
            if self.n_particles < 2 or self.n_particles * self.spatial_dim != self.dim:
                raise ConfigError(
                    f"GaussianSpace: need n_particles >= 2 and n_particles * spatial_dim = dim; "
                    f"got {n_particles} * {spatial_dim} vs dim {dim}"
                )
            self.effective_dim = (self.n_particles - 1) * self.spatial_dim
        else:
            self.effective_dim = self.dim
        self._bases: dict[tuple[torch.dtype, torch.device], torch.Tensor] = {}

    @classmethod
    def for_system(cls, system) -> GaussianSpace:
        """The CoM-free space of a ``ParticleSystem``, else R^dim."""
        if hasattr(system, "n_particles") and hasattr(system, "spatial_dim"):
            return cls(system.dim, system.n_particles, system.spatial_dim)
        return cls(system.dim)

    def __repr__(self) -> str:
        if self.com_free:
            return (
                f"GaussianSpace(dim={self.dim}, n_particles={self.n_particles}, "
                f"spatial_dim={self.spatial_dim})"
            )
        return f"GaussianSpace(dim={self.dim})"

    # -- projection and coordinates -------------------------------------------------
    def project(self, v: torch.Tensor) -> torch.Tensor:
        """Orthogonal projection of vectors (..., dim) onto the space (identity for R^dim)."""
        if not self.com_free:
            return v
        p = v.reshape(*v.shape[:-1], self.n_particles, self.spatial_dim)
        return (p - p.mean(dim=-2, keepdim=True)).reshape(v.shape)

    def basis(self, dtype: torch.dtype, device: torch.device | str) -> torch.Tensor | None:
        """Orthonormal basis (dim, effective_dim) of the space, or None for R^dim (cached)."""
        if not self.com_free:
            return None
        key = (dtype, torch.device(device))
        if key not in self._bases:
            q = helmert_basis(self.n_particles, self.spatial_dim)
            self._bases[key] = q.to(device=device, dtype=dtype)
        return self._bases[key]

    def to_coords(self, x: torch.Tensor) -> torch.Tensor:
        """Orthonormal coordinates (..., effective_dim) of points (..., dim) of the space."""
        q = self.basis(x.dtype, x.device)
        return x if q is None else x @ q

    def from_coords(self, z: torch.Tensor) -> torch.Tensor:
        """Points (..., dim) from orthonormal coordinates (..., effective_dim)."""
        q = self.basis(z.dtype, z.device)
        return z if q is None else z @ q.T

    # -- noise and densities ----------------------------------------------------------
    def noise(
        self,
        n: int,
        generator: torch.Generator | None = None,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> torch.Tensor:
        """Standard normal noise on the space, shape (n, dim).

        Drawn on the generator's device (so that a seed gives the same numbers) and moved
        to ``device`` (default: the generator's device, else the CPU); projected for a
        CoM-free space, which gives exactly the standard normal of the subspace.
        """
        dtype = dtype or torch.get_default_dtype()
        draw_on = generator.device if generator is not None else (device or "cpu")
        eps = torch.randn((int(n), self.dim), generator=generator, dtype=dtype, device=draw_on)
        return self.project(eps.to(device or draw_on))

    def _squared_norm(self, x: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
        diff = self.project(x - mean)
        return (diff * diff).sum(dim=-1)

    def log_normal(
        self, x: torch.Tensor, mean: torch.Tensor | float, var: torch.Tensor | float
    ) -> torch.Tensor:
        """log N(x; mean, var I) on the space.

        Parameters
        ----------
        x
            Points, shape (B, dim).
        mean
            Shape (B, dim), (dim,) or a scalar.
        var
            Isotropic variance, a scalar, 0-dim tensor or shape (B,); positive.

        Returns
        -------
        torch.Tensor
            Shape (B,): -|P(x - mean)|^2 / (2 var) - effective_dim / 2 log(2 pi var).
        """
        var = torch.as_tensor(var, dtype=x.dtype, device=x.device)
        quad = self._squared_norm(x, mean)
        return -0.5 * (quad / var + self.effective_dim * torch.log(2.0 * math.pi * var))

    def log_normal_diag(
        self, x: torch.Tensor, mean: torch.Tensor | float, var: torch.Tensor
    ) -> torch.Tensor:
        """log N(x; mean, diag(var)) for R^dim, with var of shape (..., dim); returns (B,).

        Raises
        ------
        ConfigError
            On a CoM-free space, where a diagonal covariance in flat coordinates is not
            a density on the subspace.
        """
        if self.com_free:
            raise ConfigError("diagonal Gaussians are not defined on a CoM-free space")
        if var.shape[-1] != self.dim:
            raise ShapeError(
                f"log_normal_diag: var must end in dim {self.dim}, got {tuple(var.shape)}"
            )
        diff = x - mean
        return -0.5 * (diff * diff / var + torch.log(2.0 * math.pi * var)).sum(dim=-1)
