"""Any ``openmm.System`` as a physsample system: the OpenMM bridge.

Torch code never sees OpenMM. An :class:`OpenMMBridge` owns one ``openmm.System`` and
one reused ``openmm.Context`` and turns positions in nm into reduced energies (kT) and
reduced forces (kT/nm). :class:`OpenMMEnergyFunction` wraps it in a
``torch.autograd.Function`` whose backward is the negative force, and
:class:`OpenMMSystem` is the :class:`~physsample.systems.base.ParticleSystem` built on
both.

Units: positions in nm; OpenMM energies in kJ/mol are divided by kT = R T (kJ/mol) at
the system's temperature, forces in kJ/(mol nm) likewise, so ``energy`` is in kT and
``force`` in kT/nm.

A configuration where OpenMM's energy is not finite (e.g. two atoms on top of each
other) gets energy ``+inf`` and force zero, so that an MCMC step rejects it rather than
crashing. Non-finite *positions* are a bug upstream and raise
:class:`~physsample.errors.ShapeError`.

Example
-------
>>> import openmm, openmm.app
>>> system = openmm.System()
>>> for _ in range(2):
...     _ = system.addParticle(1.0)
>>> bond = openmm.HarmonicBondForce()
>>> _ = bond.addBond(0, 1, 0.1, 1000.0)  # r0 = 0.1 nm, k = 1000 kJ/(mol nm^2)
>>> _ = system.addForce(bond)
>>> top = openmm.app.Topology()
>>> res = top.addResidue("DIM", top.addChain())
>>> for i in range(2):
...     _ = top.addAtom(f"A{i}", openmm.app.element.argon, res)
>>> model = OpenMMSystem(system, top, temperature=300.0, platform="Reference")
>>> model.energy(torch.tensor([[0.0, 0.0, 0.0, 0.2, 0.0, 0.0]])).shape
torch.Size([1])
"""

from __future__ import annotations

import warnings
from typing import Any

import mdtraj
import numpy as np
import openmm
import openmm.app
import openmm.unit as u
import torch
from torch.autograd.function import once_differentiable

from physsample.errors import ConfigError, ShapeError
from physsample.systems.base import ParticleSystem
from physsample.systems.openmm_io import make_context, positions_to_openmm
from physsample.systems.units import kt_kj_per_mol

__all__ = ["OpenMMBridge", "OpenMMEnergyFunction", "OpenMMSystem"]

_KJ_PER_MOL = u.kilojoule_per_mole
_KJ_PER_MOL_NM = u.kilojoule_per_mole / u.nanometer


class OpenMMBridge:
    """Reduced energies and forces of one ``openmm.System`` through one reused Context.

    Parameters
    ----------
    system
        The OpenMM system; the bridge keeps this object (pass a copy if you will
        change it).
    kt
        kT in kJ/mol; energies are divided by it.
    platform
        OpenMM platform name. If it cannot be used, the bridge warns and falls back to
        ``"Reference"``.

    Notes
    -----
    The Context is created on first use, reused by every later call and dropped when
    the bridge is pickled or deep-copied (a copy makes its own on first use). A
    Context is not thread-safe: use one bridge per thread.
    """

    def __init__(self, system: openmm.System, kt: float, platform: str = "CPU") -> None:
        self.system = system
        self.kt = float(kt)
        self.platform = str(platform)
        self._context: openmm.Context | None = None

    @property
    def context(self) -> openmm.Context:
        """The reused ``openmm.Context``, created on first access."""
        if self._context is None:
            self._context = self._make_context()
        return self._context

    def _make_context(self) -> openmm.Context:
        if self.platform == "Reference":
            return make_context(self.system, "Reference")
        try:
            return make_context(self.system, self.platform)
        except Exception as err:  # platform missing, or it failed to start
            warnings.warn(
                f"OpenMM platform '{self.platform}' is unavailable ({err}); "
                "falling back to 'Reference'",
                RuntimeWarning,
                stacklevel=4,
            )
            self.platform = "Reference"
            return make_context(self.system, "Reference")

    def evaluate(self, xyz: np.ndarray, forces: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Reduced energies and forces of a batch.

        Parameters
        ----------
        xyz
            Finite positions in nm, shape (batch, n_particles, 3), float64.
        forces
            Whether to compute forces; if not, the returned forces are zeros.

        Returns
        -------
        energies : np.ndarray
            Shape (batch,), in kT; ``+inf`` where OpenMM's energy is not finite.
        forces : np.ndarray
            Shape (batch, n_particles, 3), in kT/nm; zero where the energy is infinite.
        """
        energies = np.empty(xyz.shape[0])
        out = np.zeros_like(xyz)
        for i, frame in enumerate(xyz):
            energies[i], out[i] = self._evaluate_one(frame, forces)
        return energies, out

    def _evaluate_one(self, xyz: np.ndarray, forces: bool) -> tuple[float, np.ndarray | float]:
        self.context.setPositions(xyz)
        state = self.context.getState(getEnergy=True, getForces=forces)
        energy = state.getPotentialEnergy().value_in_unit(_KJ_PER_MOL) / self.kt
        if not np.isfinite(energy):
            return np.inf, 0.0
        if not forces:
            return energy, 0.0
        return energy, state.getForces(asNumpy=True).value_in_unit(_KJ_PER_MOL_NM) / self.kt

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_context"] = None
        return state


def _bridge_call(
    bridge: OpenMMBridge, x: torch.Tensor, forces: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Evaluate flat positions ``x`` (batch, 3n) in nm; returns (batch,) kT and (batch, 3n) kT/nm.

    The results have the dtype and device of ``x``; OpenMM itself runs on CPU numpy.
    """
    xyz = x.detach().to("cpu", torch.float64).numpy().reshape(x.shape[0], x.shape[1] // 3, 3)
    if not np.isfinite(xyz).all():
        bad = np.flatnonzero(~np.isfinite(xyz).reshape(x.shape[0], -1).all(axis=1))
        raise ShapeError(
            f"OpenMM system got non-finite positions in batch rows {bad[:10].tolist()}; "
            "check the sampler that produced them (NaN/inf usually means a diverged step)"
        )
    energies, force = bridge.evaluate(xyz, forces=forces)
    as_x = {"dtype": x.dtype, "device": x.device}
    return torch.as_tensor(energies, **as_x), torch.as_tensor(force, **as_x).reshape(x.shape)


class OpenMMEnergyFunction(torch.autograd.Function):
    """Reduced energy U(x)/kT whose gradient comes from OpenMM forces.

    ``OpenMMEnergyFunction.apply(x, bridge)`` takes positions ``x`` (batch, 3n) in nm,
    any floating dtype and device, and returns energies (batch,) in kT with the dtype
    and device of ``x``. Forward evaluates energies and forces in one pass over the
    batch and saves the forces; backward returns ``-F(x)/kT * grad_output`` with
    F in kJ/(mol nm) and kT in kJ/mol, i.e. the gradient in kT/nm. Not twice
    differentiable.
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, bridge: OpenMMBridge) -> torch.Tensor:
        energies, forces = _bridge_call(bridge, x, forces=True)
        ctx.save_for_backward(forces)
        return energies

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple[torch.Tensor, None]:
        (forces,) = ctx.saved_tensors
        return -forces * grad_output[:, None], None


def _kelvin(temperature: float | u.Quantity) -> float:
    if isinstance(temperature, u.Quantity):
        temperature = temperature.value_in_unit(u.kelvin)
    value = float(temperature)
    if not np.isfinite(value) or value <= 0:
        raise ConfigError(f"temperature must be a positive number of kelvin, got {temperature}")
    return value


def _as_mdtraj_topology(topology: Any, n_particles: int) -> mdtraj.Topology:
    if isinstance(topology, openmm.app.Topology):
        topology = mdtraj.Topology.from_openmm(topology)
    if not isinstance(topology, mdtraj.Topology):
        raise ConfigError(
            f"topology must be an openmm.app.Topology or mdtraj.Topology, got "
            f"{type(topology).__name__}"
        )
    if topology.n_atoms != n_particles:
        raise ShapeError(
            f"topology has {topology.n_atoms} atoms but the OpenMM system has "
            f"{n_particles} particles"
        )
    return topology


def _as_flat_positions(positions: Any, n_particles: int) -> torch.Tensor:
    if isinstance(positions, u.Quantity):
        positions = positions.value_in_unit(u.nanometer)
    if isinstance(positions, torch.Tensor):
        positions = positions.detach().cpu()
    arr = np.asarray(positions, dtype=np.float64)
    if arr.size != 3 * n_particles:
        raise ShapeError(
            f"positions must hold {n_particles} x 3 coordinates in nm; got shape {arr.shape}"
        )
    if not np.isfinite(arr).all():
        raise ShapeError("positions contain NaN or inf")
    return torch.from_numpy(arr.reshape(-1).copy())


class OpenMMSystem(ParticleSystem):
    """A physsample system wrapping any ``openmm.System``.

    Parameters
    ----------
    system
        The OpenMM system; a copy is kept (later changes to ``system`` do not apply).
    topology
        ``openmm.app.Topology`` or ``mdtraj.Topology`` with one atom per particle.
    temperature
        Temperature in kelvin (float or OpenMM ``Quantity``); energies are divided by
        kT = R T.
    platform
        OpenMM platform for evaluation (falls back to ``"Reference"`` if unavailable).
        ``"Reference"`` is double precision; ``"CPU"`` is mixed precision.
    name
        Name of the system.
    positions
        Optional default configuration, (n_particles, 3) or (3 n,), in nm (array,
        tensor or OpenMM ``Quantity``).

    Attributes
    ----------
    kt : float
        kT in kJ/mol at ``temperature``.

    Notes
    -----
    Positions are flat, shape (batch, 3 n) in nm. ``energy`` is in kT (batch,),
    ``force`` in kT/nm (batch, 3 n). Evaluation loops over the batch with one reused
    OpenMM Context on CPU; inputs on any device and float dtype are accepted and
    results come back on the same device and dtype. A configuration where OpenMM's
    energy is not finite gets energy ``+inf`` and zero force; non-finite positions
    raise :class:`~physsample.errors.ShapeError`.
    """

    def __init__(
        self,
        system: openmm.System,
        topology: openmm.app.Topology | mdtraj.Topology,
        temperature: float | u.Quantity,
        platform: str = "CPU",
        name: str = "openmm",
        positions: Any = None,
    ) -> None:
        n_particles = system.getNumParticles()
        super().__init__(n_particles, 3)
        self.name = str(name)
        self.temperature = _kelvin(temperature)
        self.kt = kt_kj_per_mol(self.temperature)
        self._topology = _as_mdtraj_topology(topology, n_particles)
        self._bridge = OpenMMBridge(openmm.XmlSerializer.clone(system), self.kt, platform)
        stored = None if positions is None else _as_flat_positions(positions, n_particles)
        self.register_buffer("_default_positions", stored, persistent=False)

    @property
    def platform(self) -> str:
        """Name of the OpenMM platform in use (after any fallback)."""
        return self._bridge.platform

    def _energy(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and x.requires_grad:
            return OpenMMEnergyFunction.apply(x, self._bridge)
        return _bridge_call(self._bridge, x, forces=False)[0]

    def force(self, x: torch.Tensor) -> torch.Tensor:
        """Reduced force F(x)/kT in kT/nm, shape (batch, 3 n), straight from OpenMM.

        No autograd is involved; the result carries no graph.
        """
        return _bridge_call(self._bridge, self.check_positions(x), forces=True)[1]

    def energy_and_force(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Energy (batch,) in kT and force (batch, 3 n) in kT/nm from one OpenMM pass."""
        return _bridge_call(self._bridge, self.check_positions(x), forces=True)

    def default_positions(self) -> torch.Tensor:
        """The stored configuration, shape (3 n,), float64, in nm.

        Raises
        ------
        ConfigError
            If no ``positions`` were given to the constructor.
        """
        if self._default_positions is None:
            raise ConfigError(
                f"system '{self.name}' has no stored positions; pass positions=... "
                "(nm) to OpenMMSystem, or give starting positions explicitly"
            )
        return self._default_positions.detach().clone().to(torch.float64)

    def to_openmm(self, x: torch.Tensor | None = None) -> tuple[openmm.System, u.Quantity]:
        """Return ``(copy of the openmm.System, positions)``.

        Unlike the reduced-unit systems, the OpenMM system is in physical units: its
        energy in kJ/mol equals ``energy(x) * kt``, and it is to be simulated at
        ``temperature`` kelvin. ``positions`` is a ``Quantity`` (n, 3) in nm, taken
        from ``x`` (shape (3 n,) or (1, 3 n)) or from :meth:`default_positions`.
        """
        x = self.default_positions() if x is None else torch.as_tensor(x)
        if x.shape not in ((self.dim,), (1, self.dim)):
            raise ShapeError(
                f"to_openmm takes one configuration of shape ({self.dim},) or "
                f"(1, {self.dim}); got {tuple(x.shape)}"
            )
        positions = positions_to_openmm(x, self.n_particles, 3)
        return openmm.XmlSerializer.clone(self._bridge.system), positions

    def topology(self) -> mdtraj.Topology:
        """The ``mdtraj.Topology`` of the system (shared; do not modify it)."""
        return self._topology

    def summary(self) -> dict[str, Any]:
        out = super().summary()
        out.update(temperature=self.temperature, platform=self.platform)
        return out

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, temperature={self.temperature}"
