"""fit_gmm: EM recovers well-separated clusters and BIC picks their number."""

from __future__ import annotations

import math

import pytest
import torch

from physsample import diffusion as D
from physsample.errors import ConfigError, ShapeError

F64 = torch.float64
MEANS = torch.tensor([[-5.0, 0.0], [5.0, 0.0], [0.0, 6.0]], dtype=F64)
N_PER = 300


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
