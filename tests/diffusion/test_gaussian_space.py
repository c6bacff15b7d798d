"""GaussianSpace: densities on R^d and on the centre-of-mass-free subspace."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from physsample import diffusion as D
from physsample.errors import ConfigError

F64 = torch.float64


def test_log_normal_on_rd_matches_torch_distributions():
    g = torch.Generator().manual_seed(0)
    x, mean = torch.randn(7, 3, generator=g, dtype=F64), torch.randn(7, 3, generator=g, dtype=F64)
    var = torch.rand(7, generator=g, dtype=F64) + 0.1
    space = D.GaussianSpace(3)
    normal = torch.distributions.Normal(mean, var.sqrt()[:, None])
    torch.testing.assert_close(space.log_normal(x, mean, var), normal.log_prob(x).sum(1))
    diag = torch.rand(7, 3, generator=g, dtype=F64) + 0.1
    expected = torch.distributions.Normal(mean, diag.sqrt()).log_prob(x).sum(1)
    torch.testing.assert_close(space.log_normal_diag(x, mean, diag), expected)


@pytest.mark.parametrize("n_particles, spatial_dim", [(2, 2), (4, 3)])
def test_helmert_basis_is_an_orthonormal_basis_of_the_com_free_subspace(n_particles, spatial_dim):
    q = D.helmert_basis(n_particles, spatial_dim)
    d_eff = (n_particles - 1) * spatial_dim
    assert q.shape == (n_particles * spatial_dim, d_eff)
    torch.testing.assert_close(q.T @ q, torch.eye(d_eff, dtype=F64))
    com = q.reshape(n_particles, spatial_dim, d_eff).sum(dim=0)
    torch.testing.assert_close(com, torch.zeros_like(com))


def test_com_free_log_normal_is_the_density_in_orthonormal_coordinates():
    space = D.GaussianSpace(12, n_particles=4, spatial_dim=3)
    g = torch.Generator().manual_seed(1)
    x = space.project(torch.randn(5, 12, generator=g, dtype=F64))
    mean = space.project(torch.randn(5, 12, generator=g, dtype=F64))
    q = D.helmert_basis(4, 3)
    normal = torch.distributions.Normal(mean @ q, math.sqrt(0.7))
    torch.testing.assert_close(space.log_normal(x, mean, 0.7), normal.log_prob(x @ q).sum(1))
    torch.testing.assert_close(space.from_coords(space.to_coords(x)), x)


@settings(max_examples=30, deadline=None)
@given(
    shift=st.lists(st.floats(-5, 5), min_size=3, max_size=3),
    seed=st.integers(0, 2**31 - 1),
)
def test_com_free_density_is_translation_invariant(shift, seed):
    space = D.GaussianSpace(12, n_particles=4, spatial_dim=3)
    g = torch.Generator().manual_seed(seed)
    x, mean = torch.randn(3, 12, generator=g, dtype=F64), torch.randn(3, 12, generator=g, dtype=F64)
    moved = x + torch.tensor(shift, dtype=F64).repeat(4)
    torch.testing.assert_close(space.log_normal(moved, mean, 1.3), space.log_normal(x, mean, 1.3))
    torch.testing.assert_close(space.project(space.project(x)), space.project(x))


def test_com_free_noise_is_standard_normal_on_the_subspace():
    space = D.GaussianSpace(6, n_particles=3, spatial_dim=2)
    n = 40_000
    eps = space.noise(n, torch.Generator().manual_seed(2), dtype=F64)
    torch.testing.assert_close(space.project(eps), eps)
    z = space.to_coords(eps)
    cov = z.T @ z / n
    # each entry of the empirical covariance has standard error about 1/sqrt(n) (off
    # the diagonal) or sqrt(2/n) (on it)
    assert float((cov - torch.eye(4, dtype=F64)).abs().max()) < 5 * math.sqrt(2 / n)


def test_noise_follows_the_generator_and_dtype():
    space = D.GaussianSpace(3)
    a = space.noise(4, torch.Generator().manual_seed(5), dtype=torch.float32)
    b = space.noise(4, torch.Generator().manual_seed(5), dtype=torch.float32)
    assert a.dtype == torch.float32 and torch.equal(a, b)


def test_for_system_and_bad_arguments():
    from diffusion_testlib import HarmonicCluster, ScaledGaussian

    assert D.GaussianSpace.for_system(HarmonicCluster(3, 2)).com_free
    assert not D.GaussianSpace.for_system(ScaledGaussian([0.0], [1.0], 0.0)).com_free
    with pytest.raises(ConfigError):
        D.GaussianSpace(6, n_particles=3)
    with pytest.raises(ConfigError):
        D.GaussianSpace(6, n_particles=4, spatial_dim=2)
    with pytest.raises(ConfigError):
        D.GaussianSpace(6, 3, 2).log_normal_diag(torch.zeros(1, 6), 0.0, torch.ones(6))
