"""Targets with known normalising constants and random controls for the diffusion tests."""

from __future__ import annotations

import math

import torch
from torch import nn

from physsample.diffusion import (
    GMM,
    ConstantOUSchedule,
    GaussianMixtureReference,
    GaussianReference,
    GaussianSpace,
    LinearVPSchedule,
    PinnedBrownianSchedule,
)
from physsample.systems import ParticleSystem, System

F64 = torch.float64


class ScaledGaussian(System):
    """exp(-U) with U = sum_i (x_i - m_i)^2 / (2 s_i^2) + c: Z = e^-c (2 pi)^(d/2) prod s_i."""

    name = "scaled_gaussian"

    def __init__(self, mean, std, offset: float) -> None:
        mean = torch.as_tensor(mean, dtype=F64)
        super().__init__(mean.shape[0])
        self.register_buffer("mean", mean)
        self.register_buffer("std", torch.as_tensor(std, dtype=F64))
        self.offset = float(offset)
        self.log_z = (
            -self.offset + 0.5 * self.dim * math.log(2 * math.pi) + float(torch.log(self.std).sum())
        )

    def _energy(self, x):
        z = (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)
        return 0.5 * (z * z).sum(dim=1) + self.offset


class TwoModes(System):
    """Z times an equal-weight mixture of N(+-m, s^2 I) in d dimensions (log Z given)."""

    name = "two_modes"

    def __init__(self, mode, std: float, log_z: float) -> None:
        mode = torch.as_tensor(mode, dtype=F64)
        super().__init__(mode.shape[0])
        self.register_buffer("mode", mode)
        self.std, self.log_z = float(std), float(log_z)

    def _energy(self, x):
        m = self.mode.to(x.dtype)
        d2 = torch.stack([((x - m) ** 2).sum(1), ((x + m) ** 2).sum(1)], dim=1)
        log_n = -0.5 * d2 / self.std**2 - 0.5 * self.dim * math.log(2 * math.pi * self.std**2)
        return -(torch.logsumexp(log_n, dim=1) + math.log(0.5) + self.log_z)


class HarmonicCluster(ParticleSystem):
    """U = k/2 sum_{i<j} |x_i - x_j|^2; on the CoM-free space U = k n |x|^2 / 2 exactly,
    so log Z = ((n - 1) d / 2) log(2 pi / (k n))."""

    name = "harmonic_cluster"

    def __init__(self, n_particles: int = 3, spatial_dim: int = 2, k: float = 1.0) -> None:
        super().__init__(n_particles, spatial_dim)
        self.k = float(k)
        self.log_z = 0.5 * self.com_free_dim * math.log(2 * math.pi / (self.k * n_particles))

    def _energy(self, x):
        p = self.as_particles(x)
        diff = p[:, :, None, :] - p[:, None, :, :]
        return 0.25 * self.k * (diff * diff).sum(dim=(1, 2, 3))


class MixtureTarget(System):
    """The normalised density of a diffusion.GMM, as a System (log Z = 0)."""

    name = "gmm_target"
    log_z = 0.0

    def __init__(self, gmm: GMM) -> None:
        super().__init__(gmm.dim)
        self.gmm = gmm

    def _energy(self, x):
        return -self.gmm.log_prob(x)


class RandomControl(nn.Module):
    """A small random MLP u(t, x) = scale * tanh(W2 tanh(W1 [x, t] + b1) + b2), bounded."""

    def __init__(self, dim: int, seed: int, hidden: int = 16, scale: float = 1.0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.w1 = nn.Parameter(torch.randn(dim + 1, hidden, generator=g, dtype=F64))
        self.b1 = nn.Parameter(torch.randn(hidden, generator=g, dtype=F64))
        self.w2 = nn.Parameter(torch.randn(hidden, dim, generator=g, dtype=F64) / hidden**0.5)
        self.b2 = nn.Parameter(torch.randn(dim, generator=g, dtype=F64))
        self.scale = scale

    def forward(self, t, x):
        h = torch.tanh(
            torch.cat([x, t[:, None]], dim=1) @ self.w1.to(x.dtype) + self.b1.to(x.dtype)
        )
        return self.scale * torch.tanh(h @ self.w2.to(x.dtype) + self.b2.to(x.dtype))


def two_component_gmm(dim: int, seed: int = 0) -> GMM:
    """A fixed, not-axis-aligned 2-component mixture in ``dim`` dimensions."""
    g = torch.Generator().manual_seed(seed)
    v = torch.tensor([1.0, -0.5] * dim, dtype=F64)[:dim]
    means = torch.stack([-0.7 * v, 0.9 * v])
    a = torch.randn(2, dim, dim, generator=g, dtype=F64) * 0.3
    cov = a @ a.transpose(1, 2) + 0.6 * torch.eye(dim, dtype=F64)
    return GMM.from_covariances(means, cov, torch.tensor([0.4, 0.6], dtype=F64))


def make_reference(kind: str, space: GaussianSpace):
    """The references of the unbiasedness tests, by name."""
    if kind == "dis":
        return GaussianReference(LinearVPSchedule(beta_min=0.1, beta_max=5.0), space)
    if kind == "dds":
        return GaussianReference(ConstantOUSchedule(beta=3.0, sigma=1.5, horizon=1.0), space)
    if kind == "pis":
        return GaussianReference(PinnedBrownianSchedule(sigma=1.5, horizon=1.0), space)
    if kind == "gmm":
        return GaussianMixtureReference(
            LinearVPSchedule(beta_min=0.1, beta_max=5.0),
            two_component_gmm(space.effective_dim),
            space,
        )
    raise ValueError(kind)
