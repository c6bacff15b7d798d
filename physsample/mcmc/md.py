"""Reference samples from OpenMM Langevin molecular dynamics.

:func:`run_md` runs several independent replicas of Langevin dynamics (the
``LangevinMiddleIntegrator`` splitting, "BAOAB"-like, whose configurational sampling
error is small and exact for harmonic systems) at the system's temperature, each in its
own ``openmm.Context`` with its own seeds, and returns the thinned configurations as
:class:`~physsample.samples.Samples` with energy diagnostics in the metadata.

Units: the OpenMM side is in nm, ps, amu and kJ/mol; the reduced systems (DW-4,
Lennard-Jones) have mass 1 amu, length 1 nm and kT = 1 kJ/mol, so their time unit is
sqrt(amu nm^2 / (kJ/mol)) = 1 ps. Energies returned are reduced, E / kT.

Two-dimensional systems (``spatial_dim == 2``, e.g. DW-4, embedded at z = 0) are run
with :func:`planar_langevin_integrator`, the same splitting written as an OpenMM
``CustomIntegrator`` that multiplies velocities by (1, 1, 0) after every kick and every
thermostat step. z therefore stays exactly 0, and the x-y motion is the 2-D Langevin
dynamics, with the 2-D equipartition (d/2 kT per configurational coordinate).

Platforms: ``platform=None`` picks "Reference" for small systems (at most
``SMALL_SYSTEM`` particles), where OpenMM's per-step overhead dominates. Measured on a
2-core CPU: "CPU" costs 80 to 350 us per step for DW-4, LJ-13 and LJ-55 (custom forces),
"Reference" 1 us (DW-4) to 50 to 90 us (LJ-13/55). Larger systems get "CUDA" when
available, else "CPU".

Example
-------
>>> import physsample as ps
>>> dw4 = ps.systems.get("dw4")
>>> ref = run_md(dw4, n_samples=1000, seed=0)  # doctest: +SKIP
>>> ref.x.shape, ref.metadata["tau_energy"]  # doctest: +SKIP
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import openmm
import openmm.unit as u
import torch

from physsample.errors import ConfigError, ShapeError, UserError
from physsample.mcmc.diagnostics import (
    effective_sample_size,
    integrated_autocorr_time,
    split_rhat,
)
from physsample.samples import Samples
from physsample.systems.base import ParticleSystem
from physsample.systems.units import REDUCED_TEMPERATURE, kt_kj_per_mol

__all__ = [
    "MDError",
    "run_md",
    "planar_langevin_integrator",
    "add_planar_langevin_steps",
    "minimize_positions",
    "langevin_integrator",
    "resolve_platform",
    "energy_diagnostics",
    "SMALL_SYSTEM",
    "BLOWUP_FACTOR",
]

#: Systems with at most this many particles run on the "Reference" platform by default.
SMALL_SYSTEM = 100

#: A kinetic energy above this multiple of 3/2 N kT counts as a blown-up integration.
BLOWUP_FACTOR = 100.0

_KJ = u.kilojoule_per_mole


class MDError(UserError, RuntimeError):
    """Molecular dynamics produced non-finite positions or energies.

    Attributes
    ----------
    partial : Samples or None
        The samples gathered before the failure (possibly empty).
    """

    def __init__(self, message: str, partial: Samples | None = None) -> None:
        super().__init__(message)
        self.partial = partial


# -- building blocks --------------------------------------------------------------------
def add_planar_langevin_steps(
    integrator: openmm.CustomIntegrator, friction: float, timestep: float, kt_name: str
) -> openmm.CustomIntegrator:
    """Append one Langevin-middle ("VRORV") step confined to the x-y plane.

    Per step: v <- mask (v + dt f / m); x <- x + dt/2 v;
    v <- mask (a v + sqrt(1 - a^2) sqrt(kT / m) xi); x <- x + dt/2 v, with
    a = exp(-friction dt) and mask = (1, 1, 0), so z never changes. ``kt_name`` names
    the integrator's global variable holding kT in kJ/mol. Constraints are not
    supported.
    """
    a = float(np.exp(-friction * timestep))
    # prefixed names: a Context parameter of the same name (DW-4 has "a", "b") would clash
    integrator.addGlobalVariable("psm_a", a)
    integrator.addGlobalVariable("psm_b", float(np.sqrt(1.0 - a * a)))
    integrator.addUpdateContextState()
    integrator.addComputePerDof("v", "(v + dt*f/m) * vector(1, 1, 0)")
    integrator.addComputePerDof("x", "x + 0.5*dt*v")
    integrator.addComputePerDof(
        "v", f"(psm_a*v + psm_b*sqrt({kt_name}/m)*gaussian) * vector(1, 1, 0)"
    )
    integrator.addComputePerDof("x", "x + 0.5*dt*v")
    return integrator


def planar_langevin_integrator(
    temperature: float, friction: float, timestep: float
) -> openmm.CustomIntegrator:
    """Langevin-middle dynamics in the x-y plane (see :func:`add_planar_langevin_steps`).

    Parameters
    ----------
    temperature
        Kelvin.
    friction
        Collision rate in 1/ps.
    timestep
        ps.
    """
    integrator = openmm.CustomIntegrator(timestep * u.picosecond)
    integrator.addGlobalVariable("psm_kT", kt_kj_per_mol(temperature))
    return add_planar_langevin_steps(integrator, friction, timestep, "psm_kT")


def langevin_integrator(
    temperature: float, friction: float, timestep: float, spatial_dim: int = 3, seed: int = 0
) -> openmm.Integrator:
    """OpenMM's ``LangevinMiddleIntegrator``, or the planar one for ``spatial_dim == 2``.

    ``seed`` must be a positive int (OpenMM draws a random seed for 0).
    """
    if spatial_dim == 2:
        integrator = planar_langevin_integrator(temperature, friction, timestep)
    else:
        integrator = openmm.LangevinMiddleIntegrator(
            temperature * u.kelvin, friction / u.picosecond, timestep * u.picosecond
        )
    integrator.setRandomNumberSeed(int(seed))
    return integrator


def resolve_platform(name: str | None, n_particles: int) -> openmm.Platform:
    """The OpenMM platform ``name``, or the default for ``n_particles`` if None/"auto".

    Raises
    ------
    ConfigError
        If the named platform is not available here.
    """
    if name is None or name == "auto":
        name = "Reference" if n_particles <= SMALL_SYSTEM else _fastest_platform()
    try:
        return openmm.Platform.getPlatformByName(str(name))
    except Exception as err:
        names = [openmm.Platform.getPlatform(i).getName() for i in range(_n_platforms())]
        raise ConfigError(
            f"OpenMM platform '{name}' is not available; available: {', '.join(names)}"
        ) from err


def _n_platforms() -> int:
    return openmm.Platform.getNumPlatforms()


def _fastest_platform() -> str:
    names = {openmm.Platform.getPlatform(i).getName() for i in range(_n_platforms())}
    return "CUDA" if "CUDA" in names else "CPU"


def _platform_properties(platform: openmm.Platform) -> dict[str, str]:
    return {"Precision": "mixed"} if platform.getName() in ("CUDA", "OpenCL") else {}


def _replica_seeds(seed: int, n_replicas: int) -> np.ndarray:
    """(n_replicas, 2) positive 31-bit ints: integrator and velocity seeds per replica."""
    state = np.random.SeedSequence(int(seed)).generate_state(2 * n_replicas, dtype=np.uint32)
    return (state % (2**31 - 2) + 1).astype(np.int64).reshape(n_replicas, 2)


# -- diagnostics ------------------------------------------------------------------------
def energy_diagnostics(energies: np.ndarray) -> dict[str, Any]:
    """Autocorrelation diagnostics of reduced energies, shape (chains, T).

    Returns
    -------
    dict
        ``tau_energy`` (pooled integrated autocorrelation time, in samples),
        ``tau_energy_per_replica``, ``ess`` (effective sample size of the energy mean),
        ``rhat`` (split R-hat across chains), ``energy_mean`` and ``energy_se``
        (standard error sqrt(var tau / N), with the variance about the grand mean).
        Values that need more samples are None.
    """
    energies = np.asarray(energies, dtype=np.float64)
    out: dict[str, Any] = {
        "energy_mean": float(energies.mean()),
        "energy_std": float(energies.std()),
        "tau_energy": None,
        "tau_energy_per_replica": None,
        "ess": None,
        "rhat": None,
        "energy_se": None,
    }
    if energies.shape[1] < 8:
        return out
    tau = integrated_autocorr_time(energies)
    out["tau_energy"] = tau
    out["tau_energy_per_replica"] = [integrated_autocorr_time(e) for e in energies]
    out["ess"] = effective_sample_size(energies)
    out["rhat"] = split_rhat(energies)
    out["energy_se"] = float(np.sqrt(energies.var() * max(tau, 1.0) / energies.size))
    return out


# -- the run ----------------------------------------------------------------------------
def _start_positions(system: Any, x0: Any, n_replicas: int, default: np.ndarray) -> np.ndarray:
    """Starting positions (n_replicas, n_particles, 3) in nm."""
    n_particles = default.shape[0]
    if x0 is None:
        return np.repeat(default[None], n_replicas, axis=0)
    arr = np.asarray(x0.detach().cpu() if isinstance(x0, torch.Tensor) else x0, np.float64)
    dim = n_particles * _spatial_dim(system)
    if arr.shape == (dim,):
        arr = np.repeat(arr[None], n_replicas, axis=0)
    if arr.shape != (n_replicas, dim):
        raise ShapeError(
            f"run_md: x0 must have shape ({dim},) or ({n_replicas}, {dim}) for "
            f"{n_replicas} replicas; got {arr.shape}"
        )
    xyz = arr.reshape(n_replicas, n_particles, -1)
    if xyz.shape[2] == 2:
        xyz = np.concatenate([xyz, np.zeros_like(xyz[..., :1])], axis=2)
    return xyz


def _spatial_dim(system: Any) -> int:
    return int(getattr(system, "spatial_dim", 3))


def _temperature(system: Any) -> float:
    temperature = getattr(system, "temperature", None)
    return REDUCED_TEMPERATURE if temperature is None else float(temperature)


class _MinimizationCounter(openmm.MinimizationReporter):
    """Counts the minimiser's energy evaluations."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def report(self, iteration, x, grad, args):  # noqa: ARG002 - OpenMM's signature
        self.count += 1
        return False


def minimize_positions(
    context: openmm.Context, spatial_dim: int, max_iterations: int = 1000
) -> int:
    """Minimise the context's energy in place (L-BFGS, tolerance 1 kJ/mol/nm).

    2-D systems are put back at z = 0 afterwards. Returns the number of energy
    evaluations the minimiser made.
    """
    counter = _MinimizationCounter()
    openmm.LocalEnergyMinimizer.minimize(context, 1.0, int(max_iterations), counter)
    if spatial_dim == 2:
        xyz = context.getState(getPositions=True).getPositions(asNumpy=True)
        context.setPositions(xyz.value_in_unit(u.nanometer) * [1.0, 1.0, 0.0])
    return counter.count


def _make_replicas(omm_system, starts, seeds, settings, platform) -> tuple[list, int]:
    """One Context per replica, minimised (optionally) and given thermal velocities."""
    contexts, n_min = [], 0
    for xyz, (integrator_seed, velocity_seed) in zip(starts, seeds, strict=True):
        integrator = langevin_integrator(
            settings["temperature"],
            settings["friction"],
            settings["timestep"],
            settings["spatial_dim"],
            integrator_seed,
        )
        context = openmm.Context(omm_system, integrator, platform, _platform_properties(platform))
        context.setPositions(xyz * u.nanometer)
        if settings["minimize"]:
            n_min += minimize_positions(context, settings["spatial_dim"])
        context.setVelocitiesToTemperature(settings["temperature"] * u.kelvin, int(velocity_seed))
        contexts.append(context)
    return contexts, n_min


def _read(context: openmm.Context, kt: float) -> tuple[np.ndarray, float, float]:
    """Positions (n_particles, 3) in nm, reduced potential and kinetic energies."""
    state = context.getState(getPositions=True, getEnergy=True)
    xyz = state.getPositions(asNumpy=True).value_in_unit(u.nanometer)
    potential = state.getPotentialEnergy().value_in_unit(_KJ) / kt
    return np.asarray(xyz), potential, state.getKineticEnergy().value_in_unit(_KJ) / kt


def _advance(context: openmm.Context, n_steps: int, kt: float) -> tuple[np.ndarray, float]:
    """Step ``n_steps`` and read positions and reduced energy.

    Raises ``FloatingPointError`` on non-finite results, and when the kinetic energy
    exceeds ``BLOWUP_FACTOR`` times its equipartition value 3/2 N kT: in equilibrium
    that has probability below exp(-100 N), so the integration has blown up (often
    before OpenMM reports NaN, e.g. in a cluster held by a harmonic trap).
    """
    try:
        context.getIntegrator().step(int(n_steps))
    except openmm.OpenMMException as err:  # e.g. "Particle coordinate is NaN"
        raise FloatingPointError(str(err)) from err
    xyz, energy, kinetic = _read(context, kt)
    if not (np.isfinite(energy) and np.isfinite(kinetic) and np.isfinite(xyz).all()):
        raise FloatingPointError("non-finite positions or energy")
    expected = 1.5 * xyz.shape[0]
    if kinetic > BLOWUP_FACTOR * expected:
        raise FloatingPointError(
            f"kinetic energy {kinetic:.3g} kT, over {BLOWUP_FACTOR}x its equilibrium "
            f"value {expected:g} kT: the integration has blown up"
        )
    return xyz, energy


def _counts(n_samples: int, n_replicas: int) -> np.ndarray:
    """Samples per replica, as equal as possible (the first ones get the remainder)."""
    counts = np.full(n_replicas, n_samples // n_replicas)
    counts[: n_samples % n_replicas] += 1
    return counts


def _validate(n_samples, n_replicas, timestep, friction, n_equilibration, thin) -> None:
    checks = {
        "n_samples": n_samples >= 1,
        "n_replicas": n_replicas >= 1,
        "timestep": timestep > 0,
        "friction": friction > 0,
        "n_equilibration": n_equilibration >= 0,
        "thin": thin >= 1,
    }
    bad = [name for name, ok in checks.items() if not ok]
    if bad:
        values = dict(
            n_samples=n_samples,
            n_replicas=n_replicas,
            timestep=timestep,
            friction=friction,
            n_equilibration=n_equilibration,
            thin=thin,
        )
        raise ConfigError(
            "run_md: invalid "
            + ", ".join(f"{k}={values[k]}" for k in bad)
            + " (counts must be positive, timestep (ps) and friction (1/ps) > 0)"
        )


def run_md(
    system: Any,
    n_samples: int,
    seed: int = 0,
    n_replicas: int = 4,
    timestep: float = 0.005,
    friction: float = 1.0,
    n_equilibration: int = 2000,
    thin: int = 50,
    x0: torch.Tensor | np.ndarray | None = None,
    platform: str | None = None,
    minimize: bool = True,
    remove_com: bool | None = None,
    progress: bool = False,
) -> Samples:
    """Sample ``system`` with OpenMM Langevin dynamics in independent replicas.

    Parameters
    ----------
    system
        A system with ``to_openmm()`` (a :class:`~physsample.systems.ParticleSystem`
        such as DW-4 or LJ-n, or an ``OpenMMSystem``) and ``temperature`` in kelvin
        (None means the reduced temperature, kT = 1 kJ/mol).
    n_samples
        Total number of samples, split evenly over the replicas.
    seed
        Seeds every replica's integrator and initial velocities; the same seed gives
        the same samples on the same platform.
    n_replicas
        Independent trajectories (separate Contexts), run in lockstep.
    timestep
        ps (the reduced time unit for the reduced systems). The default 0.005 is stable
        for DW-4 and LJ-13/55 at kT = 1.
    friction
        Collision rate, 1/ps.
    n_equilibration
        MD steps per replica discarded before the first sample.
    thin
        MD steps between consecutive samples of a replica.
    x0
        Starting positions, flat: (dim,) for all replicas or (n_replicas, dim), e.g.
        known modes; default ``system.to_openmm()``'s positions.
    platform
        OpenMM platform name; None picks one (see :func:`resolve_platform`).
    minimize
        Minimise each replica's energy before equilibration.
    remove_com
        Subtract each sample's centre of mass (equal weights). Default: True for
        particle systems (translation invariant), else False.
    progress
        Show a tqdm progress bar.

    Returns
    -------
    Samples
        ``x`` (n_samples, dim) float64 in nm, replica-major (replica 0's samples in
        time order, then replica 1's, ...); 2-D systems drop z. ``metadata`` holds
        ``energies`` (reduced, per sample, in the order of ``x``), ``replica``
        (index per sample), the diagnostics of :func:`energy_diagnostics`,
        ``tau_energy_ps``, ``ess_per_second``, ``wall_time_s``, ``n_md_steps``,
        ``n_energy_evaluations`` and ``settings``.

    Raises
    ------
    MDError
        If positions or energies become non-finite; ``err.partial`` holds the samples
        gathered so far.
    ConfigError, ShapeError
        On invalid settings or ``x0``.
    """
    n_samples, n_replicas, thin = int(n_samples), int(n_replicas), int(thin)
    n_equilibration = int(n_equilibration)
    _validate(n_samples, n_replicas, timestep, friction, n_equilibration, thin)
    start = time.perf_counter()
    omm_system, positions = system.to_openmm()
    platform_obj = resolve_platform(platform, omm_system.getNumParticles())
    settings = dict(
        n_samples=n_samples,
        seed=int(seed),
        n_replicas=n_replicas,
        timestep=float(timestep),
        friction=float(friction),
        n_equilibration=n_equilibration,
        thin=thin,
        minimize=bool(minimize),
        platform=platform_obj.getName(),
        x0_given=x0 is not None,
        **_system_settings(system, omm_system, remove_com),
    )
    default = np.asarray(positions.value_in_unit(u.nanometer), dtype=np.float64)
    starts = _start_positions(system, x0, n_replicas, default)
    contexts, n_min = _make_replicas(
        omm_system, starts, _replica_seeds(seed, n_replicas), settings, platform_obj
    )
    run = _Run(system, settings, kt_kj_per_mol(settings["temperature"]), start, n_min)
    run.equilibrate(contexts)
    run.produce(contexts, _counts(n_samples, n_replicas), progress)
    return run.samples()


def _system_settings(system: Any, omm_system: openmm.System, remove_com: bool | None) -> dict:
    """Settings that follow from the system: temperature, dimensions, integrator."""
    spatial_dim = _spatial_dim(system)
    return dict(
        temperature=_temperature(system),
        spatial_dim=spatial_dim,
        n_particles=omm_system.getNumParticles(),
        remove_com=isinstance(system, ParticleSystem) if remove_com is None else bool(remove_com),
        integrator="planar Langevin-middle (CustomIntegrator)"
        if spatial_dim == 2
        else "LangevinMiddleIntegrator",
    )


def _step_range(first: int, n_steps: int) -> str:
    if n_steps == 1:
        return f"MD step {first}"
    return f"MD steps {first}-{first + n_steps - 1}"


class _Run:
    """The state of one :func:`run_md` call: samples so far, counters, failure handling."""

    def __init__(self, system, settings, kt, start, n_min) -> None:
        self.system, self.settings, self.kt, self.start = system, settings, kt, start
        self.n_particles = settings["n_particles"]
        self.max_abs_z = 0.0
        n = settings["n_replicas"]
        self.xyz: list[list[np.ndarray]] = [[] for _ in range(n)]
        self.energies: list[list[float]] = [[] for _ in range(n)]
        self.n_steps = 0
        self.n_evals = n_min

    def equilibrate(self, contexts) -> None:
        n_eq = self.settings["n_equilibration"]
        for r, context in enumerate(contexts):
            if n_eq > 0:
                self._step(context, r, n_eq, "equilibration " + _step_range(1, n_eq))

    def produce(self, contexts, counts, progress: bool) -> None:
        from tqdm.auto import tqdm

        thin, n_eq = self.settings["thin"], self.settings["n_equilibration"]
        with tqdm(total=int(counts.sum()), disable=not progress, desc="run_md") as bar:
            for i in range(int(counts.max())):
                first = n_eq + i * thin + 1
                for r, context in enumerate(contexts):
                    if i < counts[r]:
                        where = _step_range(first, thin)
                        xyz, energy = self._step(context, r, thin, where)
                        self.xyz[r].append(xyz)
                        self.energies[r].append(energy)
                        bar.update(1)

    def _step(self, context, replica: int, n_steps: int, where: str):
        try:
            out = _advance(context, n_steps, self.kt)
        except FloatingPointError as err:
            self.n_steps += n_steps
            partial = self.samples(complete=False)
            raise MDError(
                f"run_md: the dynamics failed in replica {replica} during {where} "
                f"({err}); the time step "
                f"{self.settings['timestep']} ps is probably too large, try a smaller one "
                f"(e.g. {self.settings['timestep'] / 4:g}). The {len(partial)} samples "
                "gathered so far are kept in the exception's .partial attribute.",
                partial=partial,
            ) from err
        self.n_steps += n_steps
        self.n_evals += n_steps + 1
        return out

    def samples(self, complete: bool = True) -> Samples:
        """The samples gathered so far, with diagnostics in the metadata."""
        x, energies, replica = self._flat()
        metadata = dict(self._diagnostics(complete), energies=energies, replica=replica)
        return Samples(torch.from_numpy(x), system=self.system, metadata=metadata)

    def _flat(self) -> tuple[np.ndarray, list[float], list[int]]:
        n_particles, d = self.n_particles, self.settings["spatial_dim"]
        frames = [f for chain in self.xyz for f in chain]
        xyz = np.stack(frames) if frames else np.zeros((0, n_particles, 3))
        if d == 2:
            self.max_abs_z = float(np.abs(xyz[..., 2]).max()) if frames else 0.0
        xyz = xyz[..., :d]
        if self.settings["remove_com"]:
            xyz = xyz - xyz.mean(axis=1, keepdims=True)
        energies = [e for chain in self.energies for e in chain]
        replica = [r for r, chain in enumerate(self.energies) for _ in chain]
        return xyz.reshape(len(frames), n_particles * d), energies, replica

    def _diagnostics(self, complete: bool) -> dict[str, Any]:
        n_common = min(len(e) for e in self.energies)
        table = np.array([e[:n_common] for e in self.energies], dtype=np.float64)
        wall = time.perf_counter() - self.start
        out = energy_diagnostics(table) if n_common > 0 else {}
        tau, ess = out.get("tau_energy"), out.get("ess")
        step_ps = self.settings["thin"] * self.settings["timestep"]
        out.update(
            tau_energy_ps=None if tau is None else tau * step_ps,
            ess_per_second=None if ess is None else ess / wall,
            wall_time_s=wall,
            n_md_steps=self.n_steps,
            n_energy_evaluations=self.n_evals,
            complete=complete,
            sampler="run_md",
            settings=self.settings,
        )
        if self.settings["spatial_dim"] == 2:
            out["max_abs_z"] = self.max_abs_z
        return out
