"""Schedules, integrator coefficients and time grids against independent calculations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.integrate import quad, solve_ivp

from physsample import diffusion as D
from physsample.errors import ConfigError, ShapeError

F64 = torch.float64
OU_SCHEDULES = [
    D.LinearVPSchedule(beta_min=0.1, beta_max=12.0, horizon=2.0, sigma=1.3),
    D.ConstantOUSchedule(beta=3.0, sigma=0.7, horizon=1.5),
]
ALL_SCHEDULES = OU_SCHEDULES + [D.PinnedBrownianSchedule(sigma=1.7, horizon=1.2)]


def _t(value: float) -> torch.Tensor:
    return torch.tensor(value, dtype=F64)


@pytest.mark.parametrize("schedule", OU_SCHEDULES, ids=repr)
def test_integral_of_beta_matches_quadrature(schedule):
    beta = lambda s: float(schedule.beta(_t(s)))  # noqa: E731
    for s, t in [(0.0, schedule.horizon), (0.3, 0.9), (0.5, 0.5)]:
        expected, _ = quad(beta, s, t, epsabs=1e-13)
        assert float(schedule.integral_beta(_t(s), _t(t))) == pytest.approx(expected, abs=1e-10)


def test_linear_vp_beta_runs_from_beta_max_at_the_prior_to_beta_min_at_the_target():
    schedule = D.LinearVPSchedule(beta_min=0.2, beta_max=9.0, horizon=3.0)
    assert float(schedule.beta(_t(0.0))) == pytest.approx(9.0)
    assert float(schedule.beta(_t(3.0))) == pytest.approx(0.2)


def _moment_ode(drift, diff2, u, start, end, m0, v0):
    """Integrate dm/dt = drift(t) m + diff2(t) u and dv/dt = 2 drift(t) v + diff2(t)."""

    def rhs(t, y):
        lam, g2 = drift(t), diff2(t)
        return [lam * y[0] + g2 * u, 2 * lam * y[1] + g2]

    sol = solve_ivp(rhs, (start, end), [m0, v0], rtol=1e-11, atol=1e-13, method="DOP853")
    return sol.y[:, -1]


@pytest.mark.parametrize("schedule", OU_SCHEDULES, ids=repr)
def test_ou_noising_transition_matches_the_moment_equations(schedule):
    """Noising time tau = T - t: dm/dtau = -beta m / 2, dv/dtau = -beta v + sigma^2 beta."""
    big_t = schedule.horizon
    beta = lambda tau: float(schedule.beta(_t(big_t - tau)))  # noqa: E731
    for t, s in [(big_t, 0.0), (0.8, 0.3)]:
        m1, v1 = _moment_ode(
            lambda tau: -0.5 * beta(tau),
            lambda tau: schedule.sigma**2 * beta(tau),
            0.0,
            big_t - t,
            big_t - s,
            1.0,
            0.0,
        )
        a, v = schedule.noising(_t(t), _t(s))
        assert float(a) == pytest.approx(m1, rel=1e-8)
        assert float(v) == pytest.approx(v1, rel=1e-8)


@pytest.mark.parametrize("schedule", ALL_SCHEDULES, ids=repr)
def test_exact_step_matches_the_moment_equations_with_frozen_control(schedule):
    """Generative SDE dX = (lambda X + g^2 u) dt + g dW from x = 0.6 with u = -0.8."""
    drift = lambda t: float(schedule.drift_coefficient(_t(t)))  # noqa: E731
    diff2 = lambda t: float(schedule.diffusion_squared(_t(t)))  # noqa: E731
    x0, u = 0.6, -0.8
    for s, t in [(0.1, 0.7), (0.0, schedule.horizon)]:
        m1, v1 = _moment_ode(drift, diff2, u, s, t, x0, 0.0)
        a, c, v = schedule.exact_step(_t(s), _t(t))
        assert float(a * x0 + c * u) == pytest.approx(m1, rel=1e-8)
        assert float(v) == pytest.approx(v1, rel=1e-8)


def test_brownian_bridge_is_the_gaussian_conditional_of_brownian_motion():
    schedule = D.PinnedBrownianSchedule(sigma=1.7, horizon=1.0)
    s, t = 0.3, 0.8
    cov = schedule.sigma**2 * np.array([[s, s], [s, t]])  # Cov(X_s, X_t) = sigma^2 min(s, t)
    a, v = schedule.noising(_t(t), _t(s))
    assert float(a) == pytest.approx(cov[0, 1] / cov[1, 1], rel=1e-12)
    assert float(v) == pytest.approx(cov[0, 0] - cov[0, 1] ** 2 / cov[1, 1], rel=1e-12)
    a0, v0 = schedule.noising(_t(t), _t(0.0))
    assert float(a0) == 0.0 and float(v0) == 0.0


@pytest.mark.parametrize("schedule", ALL_SCHEDULES, ids=repr)
def test_noising_transitions_compose(schedule):
    """Chapman-Kolmogorov: t2 -> t1 -> t0 equals t2 -> t0."""
    t0, t1, t2 = _t(0.2), _t(0.5), _t(0.9)
    a21, v21 = schedule.noising(t2, t1)
    a10, v10 = schedule.noising(t1, t0)
    a20, v20 = schedule.noising(t2, t0)
    torch.testing.assert_close(a10 * a21, a20)
    torch.testing.assert_close(a10**2 * v21 + v10, v20)


@pytest.mark.parametrize("schedule", ALL_SCHEDULES, ids=repr)
def test_euler_maruyama_steps_converge_to_the_exact_step(schedule):
    """Composing many EM steps (u frozen) approaches the exponential integrator's step."""
    fine = torch.linspace(0.2, 0.9, 20_001, dtype=F64)
    a_em, c_em, v_em = D.euler_maruyama(schedule, fine)
    a_tot, c_tot, v_tot = _t(1.0), _t(0.0), _t(0.0)
    for a, c, v in zip(a_em, c_em, v_em, strict=True):
        a_tot, c_tot, v_tot = a * a_tot, a * c_tot + c, a * a * v_tot + v
    a_ex, c_ex, v_ex = schedule.exact_step(_t(0.2), _t(0.9))
    for em, exact in [(a_tot, a_ex), (c_tot, c_ex), (v_tot, v_ex)]:
        assert float(em) == pytest.approx(float(exact), rel=2e-3, abs=1e-6)


def test_schedules_keep_the_dtype_of_time():
    t = torch.linspace(0, 1, 5, dtype=torch.float32)
    for schedule in ALL_SCHEDULES:
        sched_t = t * schedule.horizon
        assert schedule.exact_step(sched_t[:-1], sched_t[1:]).variance.dtype == torch.float32
        assert schedule.noising(sched_t[1:], sched_t[:-1]).variance.dtype == torch.float32


def test_schedules_reject_bad_parameters():
    with pytest.raises(ConfigError):
        D.LinearVPSchedule(beta_min=5.0, beta_max=1.0)
    with pytest.raises(ConfigError):
        D.ConstantOUSchedule(sigma=0.0)
    with pytest.raises(ConfigError):
        D.PinnedBrownianSchedule(horizon=-1.0)


@pytest.mark.parametrize("make", [D.uniform_grid, D.cosine_grid])
def test_grids_run_from_zero_to_the_horizon(make):
    grid = make(7, 2.5)
    assert grid.shape == (8,) and grid.dtype == F64
    assert float(grid[0]) == 0.0 and float(grid[-1]) == 2.5
    assert bool(torch.all(grid[1:] > grid[:-1]))
    D.check_grid(grid, 2.5)


def test_cosine_grids_are_finer_at_the_ends():
    both = torch.diff(D.cosine_grid(10, ends="both"))
    assert both[0] < both[5] and both[-1] < both[5]
    target = torch.diff(D.cosine_grid(10, ends="target"))
    assert target[-1] < target[0]
    assert float(torch.diff(D.uniform_grid(4)).std()) < 1e-15


def test_check_grid_rejects_bad_grids():
    with pytest.raises(ConfigError):
        D.check_grid(torch.tensor([0.0, 0.5, 0.4, 1.0]), 1.0)
    with pytest.raises(ConfigError):
        D.check_grid(torch.tensor([0.0, 0.5]), 1.0)
    with pytest.raises(ShapeError):
        D.check_grid(torch.zeros(1), 1.0)
    with pytest.raises(ConfigError):
        D.uniform_grid(0)
    with pytest.raises(ConfigError):
        D.cosine_grid(4, ends="prior")


def test_unknown_integrator_is_a_config_error():
    schedule = D.LinearVPSchedule()
    with pytest.raises(ConfigError, match="unknown integrator"):
        D.generative_coefficients("rk4", schedule, D.uniform_grid(3))
    assert math.isclose(
        float(D.generative_coefficients("ei", schedule, D.uniform_grid(3)).variance[0]),
        float(D.exponential_integrator(schedule, D.uniform_grid(3)).variance[0]),
    )
