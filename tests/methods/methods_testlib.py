"""Targets with exact answers shared by the sampler tests."""

from __future__ import annotations

import math

import torch

from physsample.systems import ParticleSystem
from physsample.systems.gaussian_mixture import GaussianMixture


class ShiftedMixture(GaussianMixture):
    """A 2-D two-component Gaussian mixture times e^1.7: log Z = 1.7."""

    name = "shifted_mixture"

    def __init__(self) -> None:
        means = torch.tensor([[-1.0, 0.5], [1.5, -0.5]])
        variances = torch.tensor([[0.4, 0.3], [0.3, 0.5]])
        super().__init__(means, variances, torch.tensor([0.3, 0.7]))
        self.log_z = 1.7

    def _energy(self, x):
        return super()._energy(x) - 1.7


class HarmonicCluster(ParticleSystem):
    """U = k/2 sum_{i<j} |x_i - x_j|^2 = k n |x|^2 / 2 on the CoM-free space.

    log Z = ((n - 1) d / 2) log(2 pi / (k n)); exact samples are scaled projected noise.
    """

    name = "harmonic_cluster"

    def __init__(self, n_particles: int = 3, spatial_dim: int = 2, k: float = 0.5) -> None:
        super().__init__(n_particles, spatial_dim)
        self.k = k
        self.log_z = 0.5 * self.com_free_dim * math.log(2 * math.pi / (k * n_particles))

    def _energy(self, x):
        p = self.as_particles(x)
        diff = p[:, :, None, :] - p[:, None, :, :]
        return 0.25 * self.k * (diff * diff).sum(dim=(1, 2, 3))

    def _sample_exact(self, n, generator):
        eps = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        return self.remove_com(eps) / math.sqrt(self.k * self.n_particles)
