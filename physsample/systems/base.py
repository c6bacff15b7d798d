"""Base classes of the energy layer.

A :class:`System` is a batched, unnormalised Boltzmann density exp(-U(x)) over flat
positions ``x`` of shape ``(batch, dim)``. Energies are reduced, i.e. in units of kT
at the system's temperature. Subclasses implement only :meth:`System._energy`; the
base class checks shapes and gives :meth:`System.log_prob` and :meth:`System.force`
(through autograd).

A :class:`ParticleSystem` is a system of ``n_particles`` identical particles in
``spatial_dim`` dimensions, invariant under translations; it has the centre-of-mass
projection that samplers need, an OpenMM counterpart and an mdtraj topology.
"""

from __future__ import annotations

from typing import Any

import torch

from physsample.errors import NoExactSamplerError, ShapeError

__all__ = ["System", "ParticleSystem"]


class System(torch.nn.Module):
    """An unnormalised density exp(-energy(x)) over R^dim.

    Parameters
    ----------
    dim
        Number of coordinates of one configuration.

    Attributes
    ----------
    name : str
        Registry name, e.g. ``"dw4"``.
    log_z : float or None
        Exact log normalising constant of exp(-energy), where one is known.
    temperature : float or None
        Temperature in kelvin at which the energies are reduced (OpenMM-backed systems).

    Tensors that define the system (means, scales) are registered as buffers, so that
    ``system.to(device)`` moves them.
    """

    name: str = "system"
    log_z: float | None = None
    temperature: float | None = None

    def __init__(self, dim: int) -> None:
        super().__init__()
        if int(dim) < 1:
            raise ShapeError(f"{type(self).__name__}: dim must be a positive integer, got {dim}")
        self.dim = int(dim)
        # an empty buffer that follows .to(device), so that ``device`` is always known
        self.register_buffer("_device_anchor", torch.zeros(0), persistent=False)

    # -- to implement -------------------------------------------------------------
    def _energy(self, x: torch.Tensor) -> torch.Tensor:
        """Reduced energy of a checked batch ``x`` (batch, dim); returns (batch,)."""
        raise NotImplementedError

    def _sample_exact(self, n: int, generator: torch.Generator | None) -> torch.Tensor:
        raise NoExactSamplerError(
            f"system '{self.name}' has no exact sampler; draw reference samples with "
            "physsample.mcmc instead"
        )

    # -- public API ---------------------------------------------------------------
    def check_positions(self, x: torch.Tensor) -> torch.Tensor:
        """Return ``x`` if it is a floating tensor of shape (batch, dim), else raise ShapeError."""
        if not isinstance(x, torch.Tensor):
            raise ShapeError(
                f"system '{self.name}' takes a torch.Tensor of shape (batch, {self.dim}); "
                f"got {type(x).__name__}. Convert with torch.as_tensor(x)."
            )
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ShapeError(
                f"system '{self.name}' takes positions of shape (batch, {self.dim}); got "
                f"{tuple(x.shape)}. Flatten each configuration to {self.dim} numbers "
                "and stack them along dim 0."
            )
        if not x.is_floating_point():
            raise ShapeError(
                f"system '{self.name}' takes floating-point positions; got {x.dtype}. "
                "Use x.float() or x.double()."
            )
        return x

    def energy(self, x: torch.Tensor) -> torch.Tensor:
        """Reduced energy U(x)/kT.

        Parameters
        ----------
        x
            Positions, shape (batch, dim).

        Returns
        -------
        torch.Tensor
            Shape (batch,), same dtype and device as ``x``.
        """
        return self._energy(self.check_positions(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.energy(x)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """Unnormalised log density -energy(x), shape (batch,)."""
        return -self.energy(x)

    def force(self, x: torch.Tensor) -> torch.Tensor:
        """Reduced force -grad energy(x) (units kT per length unit), shape (batch, dim).

        Works inside ``torch.no_grad()``; the result carries no graph.
        """
        x = self.check_positions(x)
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(self._energy(xg).sum(), xg)
        return -grad

    def energy_and_force(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Energy (batch,) and force (batch, dim) from one evaluation, without graphs."""
        x = self.check_positions(x)
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            energy = self._energy(xg)
            (grad,) = torch.autograd.grad(energy.sum(), xg)
        return energy.detach(), -grad

    def score(self, x: torch.Tensor) -> torch.Tensor:
        """grad log_prob(x) = force(x), shape (batch, dim)."""
        return self.force(x)

    @property
    def has_exact_sampler(self) -> bool:
        return type(self)._sample_exact is not System._sample_exact

    def sample_exact(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Draw ``n`` exact samples, shape (n, dim), float64 on the system's device.

        Raises
        ------
        NoExactSamplerError
            If the system has no exact sampler.
        """
        if int(n) < 0:
            raise ShapeError(f"sample_exact: n must be non-negative, got {n}")
        return self._sample_exact(int(n), generator)

    @property
    def device(self) -> torch.device:
        """The device the system's tensors live on (follows ``system.to(device)``)."""
        return self._device_anchor.device

    def summary(self) -> dict[str, Any]:
        """A few facts about the system, for printing."""
        return {
            "name": self.name,
            "class": type(self).__name__,
            "dim": self.dim,
            "log_z": self.log_z,
            "exact_sampler": self.has_exact_sampler,
        }

    def extra_repr(self) -> str:
        return f"name={self.name!r}, dim={self.dim}"


class ParticleSystem(System):
    """A translation-invariant system of identical particles.

    Positions are flat, ``(batch, n_particles * spatial_dim)``, ordered
    (x1, y1[, z1], x2, ...). Samplers live on the centre-of-mass-free subspace of
    dimension ``(n_particles - 1) * spatial_dim``.
    """

    def __init__(self, n_particles: int, spatial_dim: int) -> None:
        if int(n_particles) < 2 or int(spatial_dim) not in (2, 3):
            raise ShapeError(
                f"{type(self).__name__}: need n_particles >= 2 and spatial_dim in (2, 3); "
                f"got {n_particles}, {spatial_dim}"
            )
        super().__init__(int(n_particles) * int(spatial_dim))
        self.n_particles = int(n_particles)
        self.spatial_dim = int(spatial_dim)

    @property
    def com_free_dim(self) -> int:
        """Dimension of the centre-of-mass-free subspace, (n_particles - 1) * spatial_dim."""
        return (self.n_particles - 1) * self.spatial_dim

    def as_particles(self, x: torch.Tensor) -> torch.Tensor:
        """Reshape flat positions (batch, dim) to (batch, n_particles, spatial_dim)."""
        return x.reshape(x.shape[0], self.n_particles, self.spatial_dim)

    def remove_com(self, x: torch.Tensor) -> torch.Tensor:
        """Project flat positions or vectors (batch, dim) onto the CoM-free subspace."""
        p = self.as_particles(x)
        return (p - p.mean(dim=1, keepdim=True)).reshape(x.shape)

    def summary(self) -> dict[str, Any]:
        out = super().summary()
        out.update(n_particles=self.n_particles, spatial_dim=self.spatial_dim)
        return out

    # -- OpenMM and mdtraj counterparts ------------------------------------------
    def to_openmm(self, x: torch.Tensor | None = None):
        """Return ``(openmm.System, positions)`` in the reduced units of :mod:`.units`.

        ``positions`` is an OpenMM ``Quantity`` of shape (n_particles, 3) in nm, taken
        from ``x`` (shape (dim,) or (1, dim)) or from :meth:`default_positions`;
        2-D systems are embedded at z = 0. The OpenMM potential energy in kJ/mol
        equals ``energy(x)`` at the system's temperature (kT = 1 kJ/mol).

        An :class:`~physsample.systems.openmm_system.OpenMMSystem` is the exception: its
        OpenMM system is in physical units, to be simulated at ``self.temperature``
        kelvin, and its energy in kJ/mol equals ``energy(x) * self.kt``. MD code should
        therefore always use ``self.temperature``.
        """
        raise NotImplementedError(f"system '{self.name}' has no OpenMM counterpart")

    def default_positions(self) -> torch.Tensor:
        """A reasonable starting configuration, shape (dim,), float64."""
        raise NotImplementedError

    def topology(self):
        """An ``mdtraj.Topology`` with one residue and one atom per particle."""
        from physsample.systems.openmm_io import particle_topology

        return particle_topology(self.n_particles, residue_name=self.name[:3].upper())
