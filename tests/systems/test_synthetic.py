"""Tests of the synthetic targets against exact results computed independently with scipy.

Reference values come from scipy quadrature or a 2-D grid, never from the code path
under test; statistical checks use tolerances of a few standard errors of the
estimator, and fixed seeds so that they are deterministic.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import integrate, stats

import physsample as ps
from physsample.errors import ConfigError, ShapeError
from physsample.systems.funnel import Funnel
from physsample.systems.gaussian_mixture import GaussianMixture, RandomGMM
from physsample.systems.manywell import Manywell
from physsample.systems.multi_double_well import MultiDoubleWell
from physsample.systems.one_dim import PolynomialWell
from physsample.systems.student_t_mixture import StudentTMixture, student_t

REGISTERED = {
    "manywell32": 32,
    "manywell64": 64,
    "mw5": 5,
    "mw50": 50,
    "gmm25": 2,
    "gmm40": 2,
    "mos": 2,
    "funnel": 10,
}
N_SIGMA = 5.0


def manywell_u(x):
    return x**4 - 6 * x**2 - 0.5 * x


def double_well_u(delta):
    return lambda x: (x**2 - delta) ** 2


def gaussian_u(x):
    return 0.5 * x**2


def sample(name_or_system, n: int, seed: int = 0) -> torch.Tensor:
    system = ps.systems.get(name_or_system) if isinstance(name_or_system, str) else name_or_system
    return system.sample_exact(n, torch.Generator().manual_seed(seed))


# -- independent 1-D references (scipy) ---------------------------------------------
def quad_z(u, lo=-8.0, hi=8.0, points=(-2.0, -1.0, 0.0, 1.0, 2.0)) -> float:
    """∫ exp(-u) dx by adaptive quadrature on a range outside which exp(-u) underflows."""
    value, _ = integrate.quad(
        lambda x: math.exp(-u(x)), lo, hi, points=points, epsabs=0, epsrel=1e-12, limit=500
    )
    return value


def quad_mean(u, f) -> float:
    """E[f(x)] under exp(-u)/Z by quadrature."""
    value, _ = integrate.quad(
        lambda x: f(x) * math.exp(-u(x)), -8, 8, points=(-2, -1, 0, 1, 2), epsabs=0, limit=500
    )
    return value / quad_z(u)


def grid_cdf(u):
    """CDF of exp(-u)/Z on a fine grid (cumulative Simpson), as a callable for kstest."""
    grid = np.linspace(-8.0, 8.0, 32001)
    pdf = np.exp(-u(grid)) / quad_z(u)
    cdf = integrate.cumulative_simpson(pdf, x=grid, initial=0.0)
    return lambda v: np.interp(v, grid, cdf)


def assert_ks(samples: torch.Tensor, cdf, p_min: float = 1e-4) -> None:
    result = stats.kstest(samples.cpu().numpy(), cdf)
    assert result.pvalue > p_min, f"KS statistic {result.statistic:.4f}, p = {result.pvalue:.2e}"


def assert_within_se(values: torch.Tensor, expected: float, n_sigma: float = N_SIGMA) -> None:
    v = values.double()
    se = float(v.std()) / math.sqrt(v.shape[0])
    mean = float(v.mean())
    assert abs(mean - expected) < n_sigma * se, (
        f"mean {mean:.5f}, expected {expected:.5f} ± {se:.2e}"
    )


# -- log Z -----------------------------------------------------------------------------
def test_manywell_one_dim_normaliser_matches_published_value_and_scipy():
    well = Manywell(2).well
    assert math.exp(well.log_z) == pytest.approx(11784.50927, rel=1e-9)
    assert math.exp(well.log_z) == pytest.approx(quad_z(manywell_u), rel=1e-10)


@pytest.mark.parametrize("dim", [2, 8, 32, 64])
def test_manywell_log_z_matches_quadrature(dim):
    expected = (dim / 2) * (math.log(quad_z(manywell_u)) + math.log(quad_z(gaussian_u)))
    assert Manywell(dim).log_z == pytest.approx(expected, rel=1e-11, abs=1e-9)


@pytest.mark.parametrize("name,delta,n_wells", [("mw5", 4.0, 5), ("mw50", 2.0, 5)])
def test_multi_double_well_log_z_matches_quadrature(name, delta, n_wells):
    system = ps.systems.get(name)
    n_gauss = system.dim - n_wells
    expected = n_wells * math.log(quad_z(double_well_u(delta))) + n_gauss * math.log(
        quad_z(gaussian_u)
    )
    assert system.log_z == pytest.approx(expected, rel=1e-11, abs=1e-10)


def grid_density(system, half_width: float, h: float):
    """exp(-energy) on a square 2-D grid; returns (grid axis, density of shape (n, n))."""
    axis = np.arange(-half_width, half_width + h / 2, h)
    xx, yy = np.meshgrid(axis, axis, indexing="ij")
    x = torch.as_tensor(np.stack([xx.ravel(), yy.ravel()], axis=1))
    with torch.no_grad():
        density = torch.exp(-system.energy(x)).numpy().reshape(xx.shape)
    return axis, density


def test_gmm25_log_z_by_2d_grid():
    system = ps.systems.get("gmm25")
    axis, density = grid_density(system, 15.0, 0.1)
    z = integrate.simpson(integrate.simpson(density, x=axis, axis=1), x=axis)
    assert math.log(z) == pytest.approx(system.log_z, abs=1e-9)


def test_funnel_log_z_by_2d_quadrature():
    system = Funnel(dim=2, scale=3.0)

    def density(x1, x0):
        with torch.no_grad():
            return math.exp(-float(system.energy(torch.tensor([[x0, x1]], dtype=torch.float64))))

    # x1 | x0 has standard deviation exp(x0 / 2): integrate over 14 of them
    z, _ = integrate.dblquad(
        density,
        -40.0,
        40.0,
        lambda x0: -14.0 * math.exp(0.5 * x0),
        lambda x0: 14.0 * math.exp(0.5 * x0),
        epsabs=0,
        epsrel=1e-9,
    )
    assert math.log(z) == pytest.approx(system.log_z, abs=1e-7)


def test_gaussian_mixture_log_prob_equals_scipy_density():
    gen = torch.Generator().manual_seed(1)
    means = torch.randn(3, 4, generator=gen, dtype=torch.float64) * 3
    variances = torch.rand(3, 4, generator=gen, dtype=torch.float64) + 0.5
    weights = torch.tensor([0.2, 0.5, 0.3], dtype=torch.float64)
    system = GaussianMixture(means, variances, weights * 7.0)  # weights normalised inside
    x = torch.randn(50, 4, generator=gen, dtype=torch.float64) * 4
    comps = [
        stats.multivariate_normal(means[k].numpy(), np.diag(variances[k].numpy())).logpdf(x.numpy())
        for k in range(3)
    ]
    expected = np.logaddexp.reduce(np.log(weights.numpy())[:, None] + np.stack(comps), axis=0)
    np.testing.assert_allclose(system.log_prob(x).numpy(), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", ["gmm40", "mos"])
def test_mixture_log_prob_equals_scipy_density(name):
    system = ps.systems.get(name)
    x = sample(name, 200, seed=3) + torch.randn(200, system.dim, dtype=torch.float64)
    means = system.means.numpy()
    if name == "gmm40":
        comp = stats.norm.logpdf(x.numpy()[:, None, :], loc=means[None], scale=1.0)
    else:
        comp = stats.t.logpdf(x.numpy()[:, None, :], df=2.0, loc=means[None])
    expected = np.logaddexp.reduce(comp.sum(axis=2) - math.log(means.shape[0]), axis=1)
    np.testing.assert_allclose(system.log_prob(x).numpy(), expected, rtol=1e-11, atol=1e-11)


def test_funnel_log_prob_equals_scipy_density():
    system = ps.systems.get("funnel")
    x = sample(system, 100, seed=2).numpy()
    expected = stats.norm.logpdf(x[:, 0], scale=3.0) + stats.norm.logpdf(
        x[:, 1:], scale=np.exp(0.5 * x[:, :1])
    ).sum(axis=1)
    got = system.log_prob(torch.as_tensor(x)).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-11, atol=1e-10)


# -- exact samplers --------------------------------------------------------------------
def test_manywell_marginals_ks():
    x = sample("manywell32", 4000)
    well_cdf = grid_cdf(manywell_u)
    for j in range(0, 32, 2):
        assert_ks(x[:, j], well_cdf)
        assert_ks(x[:, j + 1], stats.norm.cdf)
    assert_ks(x[:, 0::2].reshape(-1), well_cdf, p_min=1e-3)  # pooled: 64,000 draws


@pytest.mark.parametrize("name,delta", [("mw5", 4.0), ("mw50", 2.0)])
def test_multi_double_well_marginals_ks(name, delta):
    x = sample(name, 4000)
    well_cdf = grid_cdf(double_well_u(delta))
    for j in range(5):
        assert_ks(x[:, j], well_cdf)
    assert_ks(x[:, :5].reshape(-1), well_cdf, p_min=1e-3)
    if x.shape[1] > 5:
        assert_ks(x[:, 5:].reshape(-1), stats.norm.cdf, p_min=1e-3)


@pytest.mark.parametrize(
    "name,expected_fn",
    [
        ("manywell32", lambda: 16 * (quad_mean(manywell_u, manywell_u) + 0.5)),
        ("mw5", lambda: 5 * quad_mean(double_well_u(4.0), double_well_u(4.0))),
        ("mw50", lambda: 5 * quad_mean(double_well_u(2.0), double_well_u(2.0)) + 45 * 0.5),
    ],
)
def test_mean_energy_of_exact_samples_matches_quadrature(name, expected_fn):
    system = ps.systems.get(name)
    assert_within_se(system.energy(sample(system, 20000, seed=5)), expected_fn())


def test_funnel_mean_energy_is_entropy():
    system = ps.systems.get("funnel")
    d, s = system.dim, system.scale
    entropy = 0.5 * math.log(2 * math.pi * math.e * s**2) + (d - 1) * 0.5 * math.log(
        2 * math.pi * math.e
    )
    assert_within_se(system.energy(sample(system, 20000, seed=6)), entropy)


def test_gmm25_mean_energy_is_grid_entropy():
    system = ps.systems.get("gmm25")
    axis, density = grid_density(system, 15.0, 0.1)
    integrand = -density * np.log(np.maximum(density, 1e-300))
    entropy = integrate.simpson(integrate.simpson(integrand, x=axis, axis=1), x=axis)
    assert_within_se(system.energy(sample(system, 20000, seed=7)), entropy)


def test_mos_log_z_and_mean_energy_by_grid():
    # heavy tails: integrate on the grid x = sinh(s), uniform in s, out to |x| = 1e5
    system = ps.systems.get("mos")
    s_axis = np.linspace(-math.asinh(1e5), math.asinh(1e5), 801)
    ss, tt = np.meshgrid(s_axis, s_axis, indexing="ij")
    x = torch.as_tensor(np.stack([np.sinh(ss).ravel(), np.sinh(tt).ravel()], axis=1))
    with torch.no_grad():
        log_p = -system.energy(x).numpy().reshape(ss.shape)
    jacobian = np.cosh(ss) * np.cosh(tt)

    def integral(values):
        return integrate.simpson(integrate.simpson(values * jacobian, x=s_axis, axis=1), x=s_axis)

    assert math.log(integral(np.exp(log_p))) == pytest.approx(system.log_z, abs=1e-6)
    entropy = integral(-np.exp(log_p) * log_p)
    assert_within_se(system.energy(sample(system, 40000, seed=10)), entropy)


def test_funnel_sampler_ks():
    x = sample("funnel", 4000, seed=8)
    assert_ks(x[:, 0], stats.norm(scale=3.0).cdf)
    assert_ks((x[:, 1:] * torch.exp(-0.5 * x[:, :1])).reshape(-1), stats.norm.cdf, p_min=1e-3)


@pytest.mark.parametrize("name", ["gmm25", "gmm40", "mos"])
def test_mixture_marginals_ks(name):
    system = ps.systems.get(name)
    x = sample(system, 10000, seed=9).numpy()
    means = system.means.numpy()
    for j in range(system.dim):
        if name == "mos":
            marginal = stats.t(df=2.0, loc=means[:, j])
        else:
            marginal = stats.norm(loc=means[:, j], scale=np.sqrt(system.variances[:, j].numpy()))
        assert_ks(
            torch.as_tensor(x[:, j]), lambda v, m=marginal: m.cdf(np.asarray(v)[:, None]).mean(1)
        )


@pytest.mark.parametrize("df", [1.0, 2.0, 5.5])
def test_student_t_draws_ks(df):
    t = student_t((20000,), df, torch.Generator().manual_seed(0), torch.device("cpu"))
    assert t.shape == (20000,) and t.dtype == torch.float64
    assert_ks(t, stats.t(df).cdf, p_min=1e-3)


def voronoi_probabilities(means: np.ndarray, std: float, h_over_std: float = 0.1) -> np.ndarray:
    """P(nearest mean is k) under an equal-weight isotropic Gaussian mixture, by grid.

    Each component is integrated on its own grid of ±8 standard deviations (midpoint
    rule, scipy densities); the mass outside is below 1e-14.
    """
    k = means.shape[0]
    h = h_over_std * std
    offsets = np.arange(-8 * std + h / 2, 8 * std, h)
    ox, oy = np.meshgrid(offsets, offsets, indexing="ij")
    mass = stats.norm.pdf(ox.ravel(), scale=std) * stats.norm.pdf(oy.ravel(), scale=std) * h * h
    probs = np.zeros(k)
    for mu in means:
        points = np.stack([ox.ravel() + mu[0], oy.ravel() + mu[1]], axis=1)
        nearest = np.argmin(((points[:, None, :] - means[None]) ** 2).sum(axis=2), axis=1)
        probs += np.bincount(nearest, weights=mass, minlength=k) / k
    return probs


@pytest.mark.parametrize("name", ["gmm25", "gmm40"])
def test_mode_weights_within_binomial_error(name):
    system = ps.systems.get(name)
    n = 20000
    x = sample(system, n, seed=11)
    nearest = torch.cdist(x, system.modes).argmin(dim=1)
    counts = torch.bincount(nearest, minlength=system.modes.shape[0]).numpy()
    std = math.sqrt(float(system.variances[0, 0]))
    p = voronoi_probabilities(system.modes.numpy(), std)
    assert p.sum() == pytest.approx(1.0, abs=1e-9)
    se = np.sqrt(p * (1 - p) / n)
    assert np.all(np.abs(counts / n - p) < N_SIGMA * se), np.abs(counts / n - p) / se
    assert stats.chisquare(counts, n * p).pvalue > 1e-3


def test_polynomial_well_gaussian_is_exact():
    well = PolynomialWell([0.0, 0.0, 0.5])
    assert well.log_z == pytest.approx(0.5 * math.log(2 * math.pi), abs=1e-13)
    assert well.minima.tolist() == pytest.approx([0.0], abs=1e-14)
    assert_ks(well.sample(20000, torch.Generator().manual_seed(0)), stats.norm.cdf, p_min=1e-3)


def test_polynomial_well_sextic_against_scipy():
    def u(x):
        return x**6 - 3 * x**2 + x

    well = PolynomialWell([0.0, 1.0, -3.0, 0.0, 0.0, 0.0, 1.0])
    assert well.log_z == pytest.approx(math.log(quad_z(u)), abs=1e-11)
    assert_ks(well.sample(20000, torch.Generator().manual_seed(1)), grid_cdf(u), p_min=1e-3)
    assert well.sample(0).shape == (0,)


# -- forces ----------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(REGISTERED))
def test_force_matches_central_finite_differences(name):
    system = ps.systems.get(name)
    x = sample(system, 4, seed=12)
    if name == "funnel":
        x[:, 0] = x[:, 0].clamp(-3.0, 3.0)  # keep exp(-x0) moderate for differencing
    h = 1e-6
    eye = torch.eye(system.dim, dtype=torch.float64) * h
    plus = (x[:, None, :] + eye).reshape(-1, system.dim)
    minus = (x[:, None, :] - eye).reshape(-1, system.dim)
    with torch.no_grad():
        fd = -(system.energy(plus) - system.energy(minus)).reshape(4, system.dim) / (2 * h)
    force = system.force(x)
    assert force.shape == x.shape and force.dtype == torch.float64
    scale = 1.0 + system.energy(x).abs().max().item()
    np.testing.assert_allclose(force.numpy(), fd.numpy(), rtol=1e-6, atol=1e-7 * scale)


@pytest.mark.parametrize("name", ["manywell8", "mw5", "mw50"])
def test_modes_are_stationary_points(name):
    system = ps.systems.get(name)
    assert float(system.force(system.modes).abs().max()) < 1e-9
    if name.startswith("mw"):
        assert float(system.energy(system.modes).abs().max()) < 1e-12  # well bottoms at 0


# -- registry, shapes, configuration ---------------------------------------------------
@pytest.mark.parametrize("name,dim", sorted(REGISTERED.items()))
def test_registry_builds_every_synthetic_target(name, dim):
    system = ps.systems.get(name)
    assert system.dim == dim and system.name == name
    assert system.has_exact_sampler
    x = system.sample_exact(7)
    assert x.shape == (7, dim) and x.dtype == torch.float64
    assert system.energy(x).shape == (7,)
    assert system.log_z is not None and math.isfinite(system.log_z)


def test_registry_overrides_and_seeds():
    big = ps.systems.get("gmm40", dim=50)
    assert big.dim == 50 and big.modes.shape == (40, 50)
    assert torch.equal(RandomGMM(seed=3).means, RandomGMM(seed=3).means)
    assert not torch.equal(RandomGMM(seed=3).means, RandomGMM(seed=4).means)
    assert torch.equal(StudentTMixture(seed=2).means, StudentTMixture(seed=2).means)
    assert float(RandomGMM().means.abs().max()) <= 40.0
    assert float(StudentTMixture().means.abs().max()) <= 10.0
    assert ps.systems.get("manywell8").modes.shape == (16, 8)


def test_modes_attribute():
    assert ps.systems.get("gmm25").modes.shape == (25, 2)
    assert ps.systems.get("mos").modes.shape == (10, 2)
    assert Manywell(24).modes.shape == (4096, 24)
    assert Manywell(26).modes is None and ps.systems.get("manywell32").modes is None
    mw = ps.systems.get("mw5")
    assert mw.modes.shape == (32, 5)
    assert torch.allclose(mw.modes.abs(), torch.full((32, 5), 2.0, dtype=torch.float64))
    assert torch.all(ps.systems.get("mw50").modes[:, 5:] == 0)
    assert MultiDoubleWell(dim=20, n_wells=13, delta=1.0).modes is None
    assert Funnel().modes is None


@pytest.mark.parametrize("name", sorted(REGISTERED))
def test_bad_shapes_raise_shape_error(name):
    system = ps.systems.get(name)
    with pytest.raises(ShapeError):
        system.energy(torch.zeros(3, system.dim + 1))
    with pytest.raises(ShapeError):
        system.energy(torch.zeros(system.dim))
    with pytest.raises(ShapeError):
        system.force(torch.zeros(2, 3, system.dim))


def test_bad_configuration_raises():
    with pytest.raises(ConfigError, match="even"):
        Manywell(33)
    with pytest.raises(ConfigError):
        ps.systems.get("manywell33")
    with pytest.raises(ConfigError):
        MultiDoubleWell(dim=3, n_wells=4, delta=1.0)
    with pytest.raises(ConfigError):
        MultiDoubleWell(dim=3, n_wells=2, delta=0.0)
    with pytest.raises(ConfigError):
        PolynomialWell([0.0, 0.0, 0.0, 1.0])  # odd degree: not integrable
    with pytest.raises(ShapeError):
        GaussianMixture(torch.zeros(3, 2), torch.ones(2))
    with pytest.raises(ConfigError):
        GaussianMixture(torch.zeros(3, 2), 1.0, torch.tensor([1.0, 0.0, 1.0]))
    with pytest.raises(ConfigError):
        Funnel(dim=1)


# -- random state, dtypes, devices -----------------------------------------------------
@pytest.mark.parametrize("name", sorted(REGISTERED))
def test_sample_exact_respects_generator(name):
    system = ps.systems.get(name)
    a = system.sample_exact(64, torch.Generator().manual_seed(42))
    b = system.sample_exact(64, torch.Generator().manual_seed(42))
    c = system.sample_exact(64, torch.Generator().manual_seed(43))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert system.sample_exact(0).shape == (0, system.dim)


@pytest.mark.parametrize("name", sorted(REGISTERED))
def test_float32_and_float64_agree(name):
    system = ps.systems.get(name)
    x = sample(system, 16, seed=13)
    if name == "funnel":
        x[:, 0] = x[:, 0].clamp(-3.0, 3.0)
    e64, e32 = system.energy(x), system.energy(x.float())
    assert e32.dtype == torch.float32 and system.force(x.float()).dtype == torch.float32
    np.testing.assert_allclose(e32.double().numpy(), e64.numpy(), rtol=1e-5, atol=1e-3)


@given(st.lists(st.floats(-3, 3), min_size=8, max_size=8), st.permutations(range(4)))
@settings(max_examples=25, deadline=None)
def test_manywell_is_a_sum_over_pairs(values, order):
    system, pair = Manywell(8), Manywell(2)
    x = torch.tensor([values], dtype=torch.float64)
    pairs = x.reshape(4, 2)
    total = system.energy(x)
    assert float(total) == pytest.approx(float(pair.energy(pairs).sum()), rel=1e-12, abs=1e-10)
    assert float(system.energy(pairs[list(order)].reshape(1, 8))) == pytest.approx(
        float(total), rel=1e-12, abs=1e-10
    )


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", sorted(REGISTERED))
def test_cuda(name):
    system = ps.systems.get(name).to("cuda")
    gen = torch.Generator(device="cuda").manual_seed(0)
    x = system.sample_exact(128, gen)
    assert x.device.type == "cuda" and x.dtype == torch.float64
    cpu = ps.systems.get(name)
    np.testing.assert_allclose(
        system.energy(x).cpu().numpy(), cpu.energy(x.cpu()).numpy(), rtol=1e-10, atol=1e-9
    )
    assert system.force(x.float()).device.type == "cuda"
    # a CPU generator gives the same samples whatever the system's device
    a = system.sample_exact(16, torch.Generator().manual_seed(1)).cpu()
    assert torch.equal(a, cpu.sample_exact(16, torch.Generator().manual_seed(1)))


def test_manywell_random_wells_pick_every_well_of_every_pair():
    from physsample.mcmc.reference import starting_points

    system = ps.systems.get("manywell32")
    assert system.modes is None  # 65536 modes: not listed
    x = starting_points(system, 400, seed=0)
    assert x.shape == (400, 32)
    x1 = x[:, 0::2]
    right = (x1 > 0).double().mean(dim=0)  # share of chains in the right well, per pair
    # binomial(400, 1/2): standard error 0.025, so 0.5 +- 0.15 is 6 standard errors
    assert torch.all((right - 0.5).abs() < 0.15)
    assert torch.all(system.energy(x) < system.energy(torch.zeros(1, 32)))  # well bottoms
