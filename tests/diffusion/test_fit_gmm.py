"""fit_gmm: EM recovers well-separated clusters and BIC picks their number.

The component densities are checked against torch.distributions, and on gmm25 (25
equal Gaussians on a grid, variance 0.3, exact samples) one EM run per K must find
every mode, which a plain k-means++ start often did not.
"""

from __future__ import annotations

import math

import pytest
import torch

import physsample as ps
from physsample import diffusion as D
from physsample.diffusion import mixture
from physsample.errors import ConfigError, ShapeError

F64 = torch.float64
MEANS = torch.tensor([[-5.0, 0.0], [5.0, 0.0], [0.0, 6.0]], dtype=F64)
N_PER = 300


@pytest.fixture(autouse=True)
def _one_thread():
    """EM on small tensors is fastest, and reproducible, on one thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _clusters(seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    scales = torch.tensor([[1.0, 0.5], [0.7, 1.2], [0.8, 0.8]], dtype=F64)
    parts = [
        m + s * torch.randn(N_PER, 2, generator=g, dtype=F64)
        for m, s in zip(MEANS, scales, strict=True)
    ]
    return torch.cat(parts)


def _match(fitted: torch.Tensor) -> torch.Tensor:
    """Fitted means reordered to the true order (nearest true mean)."""
    order = torch.cdist(MEANS, fitted).argmin(dim=1)
    assert sorted(order.tolist()) == [0, 1, 2]
    return fitted[order]


@pytest.mark.parametrize("covariance", ["full", "diag"])
def test_bic_picks_three_clusters_and_em_recovers_their_means(covariance):
    gmm = D.fit_gmm(_clusters(), covariance=covariance, max_components=5, n_init=2, seed=0)
    assert gmm.n_components == 3
    means = _match(gmm.means)
    # each fitted mean is a cluster average: standard error <= 1.2 / sqrt(300) per coordinate
    assert float((means - MEANS).abs().max()) < 4 * 1.2 / math.sqrt(N_PER)
    torch.testing.assert_close(gmm.weights.sum(), torch.tensor(1.0, dtype=F64))
    assert float((gmm.weights - 1 / 3).abs().max()) < 0.02
    assert gmm.fit_info["n_components"] == 3.0 and math.isfinite(gmm.fit_info["bic"])


def test_bic_prefers_one_component_for_one_gaussian():
    x = torch.randn(500, 3, generator=torch.Generator().manual_seed(1), dtype=F64)
    assert D.fit_gmm(x, max_components=3, n_init=2).n_components == 1


def test_fixed_number_of_components_and_determinism():
    a = D.fit_gmm(_clusters(), n_components=2, seed=3)
    b = D.fit_gmm(_clusters(), n_components=2, seed=3)
    assert a.n_components == 2
    torch.testing.assert_close(a.means, b.means)


def test_fitted_covariances_are_regularised_for_degenerate_data():
    x = torch.zeros(50, 2, dtype=F64)
    x[:, 0] = torch.linspace(-1, 1, 50, dtype=F64)  # all mass on a line
    gmm = D.fit_gmm(x, n_components=1, reg_covar=1e-3)
    assert float(gmm.log_eigvals.exp().min()) > 0
    assert bool(torch.isfinite(gmm.log_prob(x)).all())


def test_reference_fit_on_com_free_samples():
    space = D.GaussianSpace(6, n_particles=3, spatial_dim=2)
    g = torch.Generator().manual_seed(4)
    x = torch.randn(400, 6, generator=g, dtype=F64) + 10.0  # CoM far from 0: projected away
    reference = D.GaussianMixtureReference.fit(
        x, D.LinearVPSchedule(), space, n_components=1, covariance="full"
    )
    assert reference.gmm.dim == 4
    # projected standard normal in 6 dims is a standard normal on the 4-dim subspace
    assert float((reference.gmm.covariances()[0] - torch.eye(4, dtype=F64)).abs().max()) < 0.3


def test_fit_gmm_argument_checks():
    with pytest.raises(ConfigError):
        D.fit_gmm(torch.zeros(10, 2), covariance="spherical")
    with pytest.raises(ShapeError):
        D.fit_gmm(torch.zeros(10))


@pytest.mark.parametrize("diagonal", [False, True])
def test_component_log_density_and_m_step_match_their_definitions(diagonal):
    g = torch.Generator().manual_seed(5)
    x = torch.randn(300, 3, generator=g, dtype=F64)
    resp = torch.softmax(torch.randn(300, 4, generator=g, dtype=F64), dim=1)
    weights, means, cov = mixture._m_step(x, resp, diagonal, reg=0.0)
    diff = x[:, None, :] - means  # (n, K, d): the two-pass definition
    outer = diff[:, :, :, None] * diff[:, :, None, :]
    expected = (resp[:, :, None, None] * outer).sum(0) / resp.sum(0)[:, None, None]
    if diagonal:
        expected = torch.diagonal(expected, dim1=-2, dim2=-1)
    torch.testing.assert_close(cov, expected)
    torch.testing.assert_close(weights, resp.mean(dim=0))
    full = torch.diag_embed(cov) if diagonal else cov
    normal = torch.distributions.MultivariateNormal(means, covariance_matrix=full)
    torch.testing.assert_close(
        mixture._component_log_density(x, means, cov, diagonal), normal.log_prob(x[:, None, :])
    )


def test_fit_is_translation_equivariant():
    shift = torch.tensor([1e4, -3e3], dtype=F64)
    a = D.fit_gmm(_clusters(), n_components=3, seed=1)
    b = D.fit_gmm(_clusters() + shift, n_components=3, seed=1)
    torch.testing.assert_close(b.means - shift, a.means, atol=1e-6, rtol=0)
    torch.testing.assert_close(b.covariances(), a.covariances(), atol=1e-6, rtol=1e-6)


def test_grid_search_agrees_with_the_full_search():
    for covariance in ("full", "diag"):
        grid = D.fit_gmm(_clusters(), covariance=covariance, max_components=8, search="grid")
        full = D.fit_gmm(_clusters(), covariance=covariance, max_components=8, search="all")
        assert grid.n_components == full.n_components == 3
    assert mixture._coarse_grid(25) == [1, 2, 3, 4, 6, 9, 14, 21, 25]
    assert mixture._coarse_grid(1) == [1]


def _gmm25_data(seed: int, n: int = 10_000) -> tuple[torch.Tensor, torch.Tensor]:
    system = ps.systems.get("gmm25")
    return system.sample_exact(n, torch.Generator().manual_seed(seed)), system.modes.double()


def _recovered(modes: torch.Tensor, means: torch.Tensor, tol: float = 0.1) -> int:
    """Number of true modes with a fitted mean within ``tol``."""
    return int((torch.cdist(modes, means).min(dim=1).values < tol).sum())


def test_one_em_run_finds_all_25_modes_of_gmm25():
    """Standard error of a fitted mean: sqrt(0.3 / 400) = 0.03 per coordinate, so 0.1 is
    3 sigma on the distance; a merged pair of modes puts a mean 2.5 away."""
    counts = []
    for seed in range(10):
        x, modes = _gmm25_data(seed)
        counts.append(_recovered(modes, D.fit_gmm(x, n_components=25, n_init=1, seed=seed).means))
    assert sum(c == 25 for c in counts) >= 9, counts


def test_bic_picks_25_components_on_gmm25():
    x, modes = _gmm25_data(0)
    gmm = D.fit_gmm(x, max_components=27, n_init=1, seed=0)  # 25 is not the cap
    assert gmm.n_components == 25 and _recovered(modes, gmm.means) == 25
    torch.testing.assert_close(gmm.weights, torch.full((25,), 0.04, dtype=F64), atol=0.01, rtol=0)


def test_init_means_seed_the_fit():
    x, modes = _gmm25_data(1, n=5000)
    gmm = D.fit_gmm(x, n_components=25, init_means=modes, kmeans_starts=1, seed=0)
    assert _recovered(modes, gmm.means) == 25
    # fewer known centres than components: completed by k-means++; more: not used
    assert D.fit_gmm(x, n_components=26, init_means=modes[:20], seed=0).n_components == 26
    assert D.fit_gmm(x, n_components=3, init_means=modes, seed=0).n_components == 3
    with pytest.raises(ShapeError, match="init_means"):
        D.fit_gmm(x, n_components=2, init_means=modes[:, :1])


def test_more_argument_checks():
    with pytest.raises(ConfigError, match="search"):
        D.fit_gmm(_clusters(), search="binary")
    with pytest.raises(ConfigError, match="n_init"):
        D.fit_gmm(_clusters(), n_init=0)
    with pytest.raises(ConfigError, match="kmeans_starts"):
        D.fit_gmm(_clusters(), kmeans_starts=0)
