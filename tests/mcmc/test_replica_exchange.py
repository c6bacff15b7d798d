"""Temperature replica exchange with openmmtools (physsample.mcmc.replica_exchange).

Samples at the target temperature are checked against exact results (quadrature for a
double well, equipartition for a planar harmonic trap), within 4 standard errors
sqrt(var * tau / N), tau the integrated autocorrelation time of the target series.
"""

from __future__ import annotations

import numpy as np
import openmm
import openmm.unit as u
import pytest
import torch

from physsample.errors import ConfigError
from physsample.mcmc.diagnostics import integrated_autocorr_time
from physsample.mcmc.replica_exchange import run_replica_exchange, temperature_ladder
from physsample.systems.base import System
from physsample.systems.units import REDUCED_TEMPERATURE, kt_kj_per_mol

N_SIGMA = 4.0


class WellAndTrap(System):
    """n particles, each in h (x^2 - 1)^2 + 0.5 k (y^2 + z^2) (kT units at ``temperature``).

    ``h = 0`` gives a plain harmonic trap 0.5 k (x^2 + y^2 + z^2). The OpenMM force always
    includes z, so a planar (2-D) run would show any z motion in its energies.
    """

    name = "well_and_trap"

    def __init__(self, n_particles=1, spatial_dim=3, h=3.0, k=1.0, temperature=300.0):
        super().__init__(n_particles * spatial_dim)
        self.n_particles, self.spatial_dim = n_particles, spatial_dim
        self.h, self.k, self.temperature = h, k, temperature

    def _energy(self, x):
        p = x.reshape(x.shape[0], self.n_particles, self.spatial_dim)
        if self.h == 0:
            return 0.5 * self.k * p.square().sum((1, 2))
        well = self.h * (p[..., 0] ** 2 - 1) ** 2
        return (well + 0.5 * self.k * p[..., 1:].square().sum(-1)).sum(-1)

    def to_openmm(self, x=None):
        kt = kt_kj_per_mol(self.temperature)
        expression = "hw*(x^2 - 1)^2 + 0.5*kw*(y^2 + z^2)"
        if self.h == 0:
            expression = "0.5*kw*(x^2 + y^2 + z^2)"
        force = openmm.CustomExternalForce(expression)
        force.addGlobalParameter("hw", self.h * kt)
        force.addGlobalParameter("kw", self.k * kt)
        system = openmm.System()
        for i in range(self.n_particles):
            system.addParticle(1.0)
            force.addParticle(i, [])
        system.addForce(force)
        xyz = np.zeros((self.n_particles, 3))
        xyz[:, 0] = 1.0
        return system, xyz * u.nanometer


def mean_well_energy(h: float) -> float:
    """<h (x^2 - 1)^2> under exp(-h (x^2 - 1)^2), by quadrature."""
    x = np.linspace(-4, 4, 400_001)
    u_x = h * (x**2 - 1) ** 2
    w = np.exp(-u_x)
    return float((u_x * w).sum() / w.sum())


def assert_within(values, expected: float) -> None:
    values = np.asarray(values, dtype=np.float64)
    tau = max(integrated_autocorr_time(values), 1.0)
    se = np.sqrt(values.var() * tau / values.size)
    assert abs(values.mean() - expected) < N_SIGMA * se, (
        f"mean {values.mean():.4f} vs {expected:.4f} (SE {se:.4f}, tau {tau:.2f})"
    )


def test_temperature_ladder_is_geometric():
    ladder = temperature_ladder(100.0, 400.0, 5)
    np.testing.assert_allclose(ladder, [100, 100 * 2**0.5, 200, 200 * 2**0.5, 400])
    assert temperature_ladder(300.0, 900.0, 1).tolist() == [300.0]


def test_double_well_target_temperature():
    """Barrier 3 kT at T; RE over T..4T must give the exact mean energy and both wells."""
    system = WellAndTrap(h=3.0)
    out = run_replica_exchange(
        system,
        1200,
        n_replicas=4,
        t_max_factor=4.0,
        steps_per_exchange=20,
        timestep=0.01,
        friction=2.0,
        n_equilibration=50,
        seed=0,
    )
    energies = np.asarray(out.metadata["energies"])
    assert out.x.shape == (1200, 3)
    # the bookkeeping is right: energies belong to the returned positions (float32 storage)
    np.testing.assert_allclose(energies, system.energy(out.x).numpy(), rtol=1e-5, atol=1e-5)
    assert_within(energies, mean_well_energy(3.0) + 1.0)  # + (y, z) equipartition
    assert_within((out.x[:, 0] > 0).double().numpy(), 0.5)  # symmetric wells
    meta = out.metadata
    assert meta["settings"]["remove_com"] is False
    assert len(meta["acceptance_neighbours"]) == 3
    assert all(0.05 < a <= 1 for a in meta["acceptance_neighbours"])
    assert 0 < meta["acceptance_swaps"] <= 1
    assert meta["round_trips"] >= 10
    assert meta["mixing_eigenvalues"][0] == pytest.approx(1.0)
    for key in (
        "tau_energy",
        "ess",
        "energy_se",
        "mixing_statistical_inefficiency",
        "wall_time_s",
        "n_md_steps",
        "n_energy_evaluations",
        "temperatures",
    ):
        assert key in meta, key
    assert meta["n_md_steps"] == 1250 * 4 * 20
    np.testing.assert_allclose(meta["temperatures"], temperature_ladder(300.0, 1200.0, 4))


def test_planar_system_target_temperature_equipartition():
    """2-D harmonic trap (3 particles, z in the OpenMM energy): <E> = d/2 with d = 6."""
    system = WellAndTrap(
        n_particles=3, spatial_dim=2, h=0.0, k=2.0, temperature=REDUCED_TEMPERATURE
    )
    out = run_replica_exchange(
        system,
        800,
        n_replicas=3,
        t_max_factor=2.0,
        steps_per_exchange=20,
        timestep=0.01,
        friction=2.0,
        n_equilibration=30,
        seed=1,
    )
    assert out.x.shape == (800, 6)
    assert out.metadata["max_abs_z"] == 0.0
    assert_within(out.metadata["energies"], 3.0)


def test_reproducible_with_seed_and_checks_the_ladder():
    system = WellAndTrap(h=1.0)
    kwargs = dict(n_replicas=2, steps_per_exchange=5, n_equilibration=2, timestep=0.01)
    a = run_replica_exchange(system, 10, seed=3, **kwargs)
    b = run_replica_exchange(system, 10, seed=3, **kwargs)
    assert torch.equal(a.x, b.x) and a.metadata["replica"] == b.metadata["replica"]
    with pytest.raises(ConfigError):
        run_replica_exchange(system, 10, temperatures=[310.0, 400.0])  # must start at T
    with pytest.raises(ConfigError):
        run_replica_exchange(system, 10, temperatures=[300.0, 290.0])
    with pytest.raises(ConfigError):
        run_replica_exchange(system, 0)
