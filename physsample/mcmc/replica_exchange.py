"""Parallel tempering (temperature replica exchange) with openmmtools.

:func:`run_replica_exchange` runs openmmtools' ``ReplicaExchangeSampler``, the trusted
implementation, over a geometric temperature ladder T_0 = T (the system's
temperature) < T_1 < ... < T_max: every iteration, each replica runs
``steps_per_exchange`` steps of Langevin dynamics (openmmtools' ``LangevinDynamicsMove``
with ``LangevinMiddleIntegrator``; for 2-D systems the planar integrator of
:mod:`physsample.mcmc.md`), then openmmtools attempts Metropolis swaps of the
thermodynamic states between replicas. The configuration that holds the target state
T_0 after an iteration is a sample at T.

Velocities are redrawn from the Maxwell-Boltzmann distribution of the replica's current
temperature before every propagation (seeded, see below). openmmtools swaps states
without rescaling velocities, so a configuration arriving at T from a hotter state
would otherwise carry hot velocities into the next target-temperature sample; with 20
steps between exchanges that biased a double well's mean energy by over 5 standard
errors (``tests/mcmc/test_replica_exchange.py`` catches it).

openmmtools needs a storage file: a ``MultiStateReporter`` writes it to a temporary
directory that is removed afterwards. Positions are collected in memory after every
iteration (``sampler.sampler_states``; reading them back from the NetCDF file costs
about 10 ms per iteration) and matched with the replica-to-state map and the reduced
energies that the reporter stored.

Randomness: openmmtools draws swaps from NumPy's and numba's global generators; both
are seeded from ``seed`` (NumPy's global state is restored afterwards), and the
Langevin integrator gets a fixed seed, so a run is reproducible on one platform.

Example
-------
>>> import physsample as ps
>>> lj13 = ps.systems.get("lj13")
>>> out = run_replica_exchange(lj13, n_samples=500, n_replicas=6)  # doctest: +SKIP
>>> out.metadata["acceptance_neighbours"]  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import functools
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import openmm
import openmm.unit as u
import torch

from physsample.errors import ConfigError
from physsample.mcmc.md import (
    MDError,
    _platform_properties,
    _replica_seeds,
    _start_positions,
    _system_settings,
    _temperature,
    add_planar_langevin_steps,
    energy_diagnostics,
    minimize_positions,
    resolve_platform,
)
from physsample.samples import Samples
from physsample.systems.openmm_io import quiet_openmmtools

__all__ = ["run_replica_exchange", "temperature_ladder"]


def temperature_ladder(temperature: float, t_max: float, n: int) -> np.ndarray:
    """Geometric ladder of ``n`` temperatures from ``temperature`` to ``t_max`` (kelvin)."""
    if n == 1:
        return np.array([float(temperature)])
    return float(temperature) * (t_max / temperature) ** (np.arange(n) / (n - 1))


# -- openmmtools pieces -----------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def _openmmtools_classes():
    """The integrator and move classes, built on first use (openmmtools imports slowly)."""
    from openmmtools import integrators, mcmc

    class PlanarLangevinIntegrator(integrators.ThermostatedIntegrator):
        """Planar Langevin-middle steps whose kT openmmtools sets per thermodynamic state."""

        def __init__(self, temperature, friction: float, timestep: float):
            super().__init__(temperature, timestep * u.picosecond)
            add_planar_langevin_steps(self, friction, timestep, "kT")

    class SeededLangevinMove(mcmc.BaseIntegratorMove):
        """Langevin-middle dynamics (planar in 2-D) with a fixed integrator seed."""

        _EXTRA = ("timestep", "friction", "spatial_dim", "seed", "n_calls")

        def __init__(self, timestep, friction, spatial_dim, seed, n_steps):
            super().__init__(n_steps=int(n_steps), reassign_velocities=False)
            # a Quantity, as openmmtools' timing code reads move.timestep
            self.timestep = float(timestep) * u.picosecond
            self.friction = float(friction)
            self.spatial_dim, self.seed = int(spatial_dim), int(seed)
            self.n_calls = 0

        def _get_integrator(self, thermodynamic_state):
            temperature = thermodynamic_state.temperature
            if self.spatial_dim == 2:
                dt_ps = self.timestep.value_in_unit(u.picosecond)
                integrator = PlanarLangevinIntegrator(temperature, self.friction, dt_ps)
            else:
                integrator = openmm.LangevinMiddleIntegrator(
                    temperature, self.friction / u.picosecond, self.timestep
                )
            integrator.setRandomNumberSeed(self.seed)
            return integrator

        def _before_integration(self, context, thermodynamic_state):
            # Fresh Maxwell-Boltzmann velocities at this state's temperature: after a
            # swap the replica's velocities belong to its old temperature, and keeping
            # them biases the samples (visibly so at the target temperature).
            # Seeded from (seed, call count, temperature), so runs are reproducible.
            self.n_calls += 1
            temperature = thermodynamic_state.temperature
            key = [self.seed, self.n_calls, int(round(temperature.value_in_unit(u.kelvin) * 1e6))]
            velocity_seed = int(np.random.SeedSequence(key).generate_state(1)[0] % (2**31 - 2)) + 1
            context.setVelocitiesToTemperature(temperature, velocity_seed)

        def __getstate__(self):  # openmmtools deep-copies and serialises moves
            state = super().__getstate__()
            state.update({key: getattr(self, key) for key in self._EXTRA})
            return state

        def __setstate__(self, state):
            super().__setstate__(state)
            for key in self._EXTRA:
                setattr(self, key, state[key])

    return PlanarLangevinIntegrator, SeededLangevinMove


@functools.lru_cache(maxsize=1)
def _numba_seeder():
    """A jitted ``np.random.seed`` (numba keeps its own global generator), or None."""
    try:
        from numba import njit
    except ImportError:  # openmmtools then mixes in pure Python, with NumPy's generator
        return None

    @njit
    def seed_numba(s):
        np.random.seed(s)

    return seed_numba


def _seed_global_generators(seed: int) -> None:
    """Seed NumPy's and numba's global generators (openmmtools draws swaps from them)."""
    np.random.seed(seed)
    seeder = _numba_seeder()
    if seeder is not None:
        seeder(seed)


# -- the run ----------------------------------------------------------------------------
def _validate(n_samples, n_replicas, t_max_factor, steps_per_exchange, n_equilibration):
    if n_samples < 1 or n_replicas < 1 or steps_per_exchange < 1 or n_equilibration < 0:
        raise ConfigError(
            "run_replica_exchange: n_samples, n_replicas and steps_per_exchange must be "
            f"positive and n_equilibration >= 0; got {n_samples}, {n_replicas}, "
            f"{steps_per_exchange}, {n_equilibration}"
        )
    if t_max_factor < 1:
        raise ConfigError(f"run_replica_exchange: t_max_factor must be >= 1, got {t_max_factor}")


def _ladder(system, temperatures, n_replicas, t_max_factor) -> np.ndarray:
    target = _temperature(system)
    if temperatures is None:
        return temperature_ladder(target, target * t_max_factor, n_replicas)
    ladder = np.asarray(temperatures, dtype=np.float64)
    if ladder.ndim != 1 or not np.isclose(ladder[0], target) or np.any(np.diff(ladder) <= 0):
        raise ConfigError(
            "run_replica_exchange: temperatures must increase and start at the system's "
            f"temperature {target:g} K; got {list(ladder)}"
        )
    return ladder


def _starting_states(omm_system, starts, settings, platform):
    """openmmtools SamplerStates from (optionally minimised) starting positions."""
    from openmmtools import states

    sampler_states, n_evals = [], 0
    for xyz in starts:
        integrator = openmm.VerletIntegrator(0.001)
        context = openmm.Context(omm_system, integrator, platform, _platform_properties(platform))
        context.setPositions(xyz * u.nanometer)
        if settings["minimize"]:
            n_evals += minimize_positions(context, settings["spatial_dim"])
        positions = context.getState(getPositions=True).getPositions(asNumpy=True)
        sampler_states.append(states.SamplerState(positions))
        del context, integrator
    return sampler_states, n_evals


def _build_sampler(omm_system, ladder, settings, platform, seed):
    from openmmtools import cache, multistate, states

    thermodynamic_states = [
        states.ThermodynamicState(system=omm_system, temperature=t * u.kelvin) for t in ladder
    ]
    move = _openmmtools_classes()[1](
        settings["timestep"],
        settings["friction"],
        settings["spatial_dim"],
        seed,
        settings["steps_per_exchange"],
    )
    sampler = multistate.ReplicaExchangeSampler(
        mcmc_moves=move,
        number_of_iterations=settings["n_equilibration"] + settings["n_samples"],
        replica_mixing_scheme=settings["mixing"],
        online_analysis_interval=None,
    )
    # One cache for propagation and energies, warmed with our integrator: otherwise
    # openmmtools builds energy Contexts with its default GeodesicBAOABIntegrator,
    # whose global variable "a" clashes with DW-4's force parameter "a".
    context_cache = cache.ContextCache(capacity=None, time_to_live=None, platform=platform)
    state0 = thermodynamic_states[0]
    context_cache.get_context(state0, move._get_integrator(state0))
    sampler.energy_context_cache = context_cache
    sampler.sampler_context_cache = context_cache
    return sampler, thermodynamic_states


def _iterate(sampler, n_iterations: int, progress: bool) -> np.ndarray:
    """Run ``n_iterations``; returns positions (n_iterations, n_replicas, n_atoms, 3) nm."""
    from tqdm.auto import tqdm

    frames = []
    with tqdm(total=n_iterations, disable=not progress, desc="replica exchange") as bar:
        for _ in range(n_iterations):
            sampler.run(n_iterations=1)
            frames.append(
                np.stack(
                    [
                        s.positions.value_in_unit(u.nanometer).astype(np.float32)
                        for s in sampler.sampler_states
                    ]
                )
            )
            bar.update(1)
    return np.stack(frames)


def _mixing_statistics(reporter, ladder, states_per_iteration, n_eq) -> dict[str, Any]:
    """Swap acceptance per neighbouring pair and round trips, from the reporter."""
    accepted, proposed = reporter.read_mixing_statistics()
    acc = np.asarray(accepted)[n_eq + 1 :].sum(axis=0)
    prop = np.asarray(proposed)[n_eq + 1 :].sum(axis=0)
    n = len(ladder)
    pairs = [
        float(acc[k, k + 1] / prop[k, k + 1]) if prop[k, k + 1] else None for k in range(n - 1)
    ]
    total = float(acc.sum() - np.trace(acc)) / max(float(prop.sum() - np.trace(prop)), 1.0)
    return {
        "acceptance_neighbours": pairs,
        "acceptance_swaps": total,
        "round_trips": _round_trips(states_per_iteration, n),
    }


def _round_trips(states: np.ndarray, n_states: int) -> int:
    """Number of completed 0 -> top -> 0 state round trips, summed over replicas."""
    if n_states < 2:
        return 0
    trips = 0
    for track in states.T:
        going_up = None
        for s in track:
            if s == 0:
                trips += going_up is False
                going_up = True
            elif s == n_states - 1 and going_up:
                going_up = False
    return int(trips)


def _target_samples(positions, replica_states, energies, spatial_dim, remove_com):
    """Positions (T, dim) and reduced energies (T,) of the replica in state 0."""
    replica = np.argmax(replica_states == 0, axis=1)
    steps = np.arange(len(replica))
    xyz = positions[steps, replica][..., :spatial_dim].astype(np.float64)
    if remove_com:
        xyz = xyz - xyz.mean(axis=1, keepdims=True)
    return xyz.reshape(len(replica), -1), energies[steps, replica, 0], replica


def run_replica_exchange(
    system: Any,
    n_samples: int,
    temperatures: Any = None,
    n_replicas: int = 8,
    t_max_factor: float = 4.0,
    steps_per_exchange: int = 100,
    timestep: float = 0.005,
    friction: float = 1.0,
    n_equilibration: int = 100,
    mixing: str = "swap-all",
    seed: int = 0,
    x0: Any = None,
    platform: str | None = None,
    minimize: bool = True,
    remove_com: bool | None = None,
    progress: bool = False,
) -> Samples:
    """Samples at the system's temperature from temperature replica exchange.

    Parameters
    ----------
    system
        A system with ``to_openmm()`` and ``temperature`` (kelvin; None means the
        reduced temperature), as for :func:`~physsample.mcmc.md.run_md`.
    n_samples
        Iterations after equilibration; each gives one sample at the target temperature.
    temperatures
        Increasing ladder in kelvin starting at the system's temperature; default a
        geometric ladder of ``n_replicas`` temperatures from T to ``t_max_factor`` T.
    n_replicas
        Number of temperatures (and replicas) when ``temperatures`` is None.
    t_max_factor
        T_max / T for the default ladder.
    steps_per_exchange
        Langevin steps per replica between swap attempts.
    timestep, friction
        ps and 1/ps, as for :func:`~physsample.mcmc.md.run_md`.
    n_equilibration
        Iterations discarded before the first sample.
    mixing
        openmmtools' ``replica_mixing_scheme``: "swap-all" (Gibbs mixing over all
        pairs) or "swap-neighbors".
    seed
        Seeds the integrator and the swap draws.
    x0
        Starting positions, (dim,) or (n_replicas, dim); default ``to_openmm()``'s.
    platform
        OpenMM platform name; None picks one (see :func:`~physsample.mcmc.md.resolve_platform`).
    minimize
        Minimise the starting positions first.
    remove_com
        Subtract each sample's centre of mass; default True for particle systems.
    progress
        tqdm progress bar over iterations.

    Returns
    -------
    Samples
        ``x`` (n_samples, dim) float64 at the target temperature, in iteration order;
        ``metadata`` holds ``energies`` (reduced, at the target temperature),
        ``replica`` (which replica held the target state), ``temperatures``,
        ``acceptance_neighbours`` (swap acceptance between neighbouring temperatures,
        from openmmtools' mixing statistics), ``acceptance_swaps``, ``round_trips``,
        openmmtools' ``mixing_eigenvalues`` and ``mixing_statistical_inefficiency``,
        the diagnostics of :func:`~physsample.mcmc.md.energy_diagnostics` and
        ``wall_time_s``, ``n_md_steps``, ``n_energy_evaluations``, ``settings``.

    Raises
    ------
    MDError
        If openmmtools' dynamics fail (NaN energies after its restart attempts).
    """
    n_samples, n_equilibration = int(n_samples), int(n_equilibration)
    _validate(n_samples, int(n_replicas), t_max_factor, int(steps_per_exchange), n_equilibration)
    start = time.perf_counter()
    omm_system, positions = system.to_openmm()
    ladder = _ladder(system, temperatures, int(n_replicas), float(t_max_factor))
    platform_obj = resolve_platform(platform, omm_system.getNumParticles())
    settings = dict(
        n_samples=n_samples,
        n_equilibration=n_equilibration,
        seed=int(seed),
        temperatures=ladder.tolist(),
        n_replicas=len(ladder),
        timestep=float(timestep),
        friction=float(friction),
        steps_per_exchange=int(steps_per_exchange),
        mixing=str(mixing),
        minimize=bool(minimize),
        platform=platform_obj.getName(),
        **_system_settings(system, omm_system, remove_com),
    )
    default = np.asarray(positions.value_in_unit(u.nanometer), dtype=np.float64)
    starts = _start_positions(system, x0, len(ladder), default)
    with quiet_openmmtools(), _restored_numpy_random():
        _seed_global_generators(int(seed))
        x, energies, replica, stats, n_min = _run(
            omm_system, ladder, settings, platform_obj, starts, progress
        )
    metadata = _metadata(settings, energies, replica, stats, n_min, start)
    return Samples(torch.from_numpy(x), system=system, metadata=metadata)


def _metadata(settings, energies, replica, stats, n_min, start) -> dict[str, Any]:
    """Diagnostics, mixing statistics, counts and settings of a finished run."""
    n_iter = settings["n_equilibration"] + settings["n_samples"]
    steps = settings["steps_per_exchange"]
    metadata = dict(
        energy_diagnostics(energies[None]),
        **stats,
        energies=energies.tolist(),
        replica=replica.tolist(),
        temperatures=settings["temperatures"],
        wall_time_s=time.perf_counter() - start,
        n_md_steps=n_iter * settings["n_replicas"] * steps,
        # per replica and iteration: the steps, the move's final energy, the swap energies
        n_energy_evaluations=n_iter * settings["n_replicas"] * (steps + 2) + n_min,
        sampler="run_replica_exchange (openmmtools ReplicaExchangeSampler)",
        settings=settings,
    )
    tau = metadata["tau_energy"]
    metadata["tau_energy_ps"] = None if tau is None else tau * steps * settings["timestep"]
    return metadata


@contextlib.contextmanager
def _restored_numpy_random():
    state = np.random.get_state()
    try:
        yield
    finally:
        np.random.set_state(state)


def _run(omm_system, ladder, settings, platform, starts, progress):
    """Create, run and read back one openmmtools replica-exchange simulation."""
    from openmmtools import multistate
    from openmmtools.mcmc import IntegratorMoveError
    from openmmtools.multistate.utils import SimulationNaNError

    seed = int(_replica_seeds(settings["seed"], 1)[0, 0])
    sampler, thermodynamic_states = _build_sampler(omm_system, ladder, settings, platform, seed)
    sampler_states, n_min = _starting_states(omm_system, starts, settings, platform)
    workdir = Path(tempfile.mkdtemp(prefix="physsample-repex-"))
    reporter = multistate.MultiStateReporter(str(workdir / "repex.nc"), checkpoint_interval=1)
    try:
        sampler.create(
            thermodynamic_states=thermodynamic_states,
            sampler_states=sampler_states,
            storage=reporter,
        )
        n_iter = settings["n_equilibration"] + settings["n_samples"]
        try:
            positions = _iterate(sampler, n_iter, progress)
        except (IntegratorMoveError, SimulationNaNError) as err:
            raise MDError(
                f"run_replica_exchange: openmmtools' Langevin dynamics gave NaN energies "
                f"({err}); the time step {settings['timestep']} ps is probably too large "
                "for the hottest replica, try a smaller one or a lower t_max_factor"
            ) from err
        replica_states = np.asarray(reporter.read_replica_thermodynamic_states())[1:]
        energies = np.asarray(reporter.read_energies()[0])[1:]
        stats = _mixing_statistics(reporter, ladder, replica_states, settings["n_equilibration"])
        stats.update(_openmmtools_mixing(reporter, settings["n_equilibration"]))
    finally:
        reporter.close()
        del sampler
        shutil.rmtree(workdir, ignore_errors=True)
    keep = slice(settings["n_equilibration"], None)
    x, e, replica = _target_samples(
        positions[keep],
        replica_states[keep],
        energies[keep],
        settings["spatial_dim"],
        settings["remove_com"],
    )
    if settings["spatial_dim"] == 2:  # every replica, every iteration
        stats["max_abs_z"] = float(np.abs(positions[..., 2]).max())
    return x, e, replica, stats, n_min


def _openmmtools_mixing(reporter, n_eq: int) -> dict[str, Any]:
    """openmmtools' own replica-mixing statistics (state transition matrix eigenvalues)."""
    from openmmtools.multistate import MultiStateSamplerAnalyzer

    try:
        analyzer = MultiStateSamplerAnalyzer(reporter)
        mixing = analyzer.generate_mixing_statistics(number_equilibrated=n_eq)
    except Exception as err:  # analysis is a bonus; never lose the samples over it
        return {"mixing_error": str(err)}
    return {
        "mixing_transition_matrix": np.asarray(mixing.transition_matrix).tolist(),
        "mixing_eigenvalues": np.asarray(mixing.eigenvalues).tolist(),
        "mixing_statistical_inefficiency": float(mixing.statistical_inefficiency),
    }
