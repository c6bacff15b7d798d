"""The container that flows between pipeline stages: positions, log-weights, metadata.

A :class:`Samples` holds ``N`` configurations ``x`` of shape (N, dim), optional
importance log-weights (N,), the name of the system they belong to and a
JSON-serialisable ``metadata`` dict (settings, diagnostics, wall time, energy
evaluations).

File format
-----------
:meth:`Samples.save` writes one HDF5 file. For a particle system (any system with a
``topology()``) the file is an mdtraj HDF5 trajectory, so ``mdtraj.load(path)`` opens
it (positions in nm, float32, 2-D systems embedded at z = 0). Beside the trajectory,
in the group ``/physsample``, it holds what mdtraj does not: the raw flat positions
``x`` in their own float dtype, the ``log_weights``, the system name and the metadata
as a UTF-8 JSON string. Systems without a topology (e.g. a 2-D Gaussian mixture) get
only the ``/physsample`` group. :meth:`Samples.load` reads the group back exactly.

Example
-------
>>> import torch
>>> s = Samples(torch.randn(100, 2), log_weights=torch.zeros(100), system="gmm25")
>>> s.save("gmm25.h5")  # doctest: +SKIP
>>> Samples.load("gmm25.h5").x.shape  # doctest: +SKIP
torch.Size([100, 2])
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from physsample.errors import ConfigError, ShapeError, UserError

__all__ = ["Samples", "SamplesFileError", "TopologyError"]

_GROUP = "physsample"
_FORMAT = "physsample.samples"
_FORMAT_VERSION = 1


class SamplesFileError(UserError):
    """A samples file is missing, truncated, or was not written by :meth:`Samples.save`."""


class TopologyError(UserError, TypeError):
    """An mdtraj conversion was asked of samples whose system has no topology."""


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return (text[:200] + "...") if len(text) > 200 else (text or type(err).__name__)


def _json_default(obj: Any) -> Any:
    """Convert numpy / torch scalars and arrays and paths for ``json.dumps``."""
    if isinstance(obj, (np.generic, np.ndarray)):
        return obj.tolist()
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu().tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"object of type {type(obj).__name__} is not JSON-serialisable")


def _as_metadata(metadata: Mapping[str, Any] | None) -> dict[str, Any]:
    """A JSON round trip of ``metadata``, so that a saved and loaded copy compares equal."""
    if metadata is None:
        return {}
    if not isinstance(metadata, Mapping):
        raise ConfigError(f"Samples: metadata must be a dict, got {type(metadata).__name__}")
    try:
        return json.loads(json.dumps(dict(metadata), default=_json_default))
    except (TypeError, ValueError) as err:
        raise ConfigError(f"Samples: metadata must be JSON-serialisable ({err})") from err


def _as_float_tensor(value: Any, what: str) -> torch.Tensor:
    tensor = torch.as_tensor(value)
    if not tensor.is_floating_point():
        raise ShapeError(f"Samples: {what} must be floating point, got {tensor.dtype}")
    return tensor.detach()


def _check_x(x: Any) -> torch.Tensor:
    x = _as_float_tensor(x, "x")
    if x.ndim != 2:
        raise ShapeError(
            f"Samples: x must have shape (N, dim), got {tuple(x.shape)}; flatten each "
            "configuration to one row"
        )
    return x


def _check_log_weights(log_weights: Any, x: torch.Tensor) -> torch.Tensor | None:
    if log_weights is None:
        return None
    lw = _as_float_tensor(log_weights, "log_weights").to(x.device)
    if lw.shape != (x.shape[0],):
        raise ShapeError(
            f"Samples: log_weights must have shape ({x.shape[0]},) to match x, got "
            f"{tuple(lw.shape)}"
        )
    return lw


def _topology_of(system: Any):
    """``system.topology()`` if the system has one, else None."""
    method = getattr(system, "topology", None)
    if not callable(method):
        return None
    try:
        return method()
    except NotImplementedError:
        return None


def _name_of(system: Any) -> str | None:
    if system is None or isinstance(system, str):
        return system
    name = getattr(system, "name", None)
    if not isinstance(name, str):
        raise ConfigError(
            f"Samples: system must be a name or a System, got {type(system).__name__}"
        )
    return name


def _spatial_dim(dim: int, topology) -> int:
    n_atoms = topology.n_atoms
    if n_atoms == 0 or dim % n_atoms or dim // n_atoms not in (2, 3):
        raise ShapeError(
            f"Samples: dim {dim} does not match a topology of {n_atoms} atoms in 2 or 3 dimensions"
        )
    return dim // n_atoms


def _embed_3d(x: torch.Tensor, topology) -> np.ndarray:
    """Flat positions (N, dim) -> float32 (N, n_atoms, 3) in nm, 2-D embedded at z = 0."""
    spatial = _spatial_dim(x.shape[1], topology)
    xyz = x.detach().cpu().to(torch.float32).numpy().reshape(x.shape[0], topology.n_atoms, spatial)
    if spatial == 2:
        xyz = np.concatenate([xyz, np.zeros_like(xyz[..., :1])], axis=-1)
    return xyz


def _to_numpy(tensor: torch.Tensor) -> np.ndarray:
    """CPU numpy copy; dtypes numpy lacks (bfloat16) are widened to float32."""
    tensor = tensor.detach().cpu()
    if tensor.dtype not in (torch.float16, torch.float32, torch.float64):
        tensor = tensor.to(torch.float32)
    return tensor.numpy()


def _dtype_name(tensor: torch.Tensor) -> str:
    return str(tensor.dtype).removeprefix("torch.")


class Samples:
    """Configurations with optional importance weights, the system's name and metadata.

    Parameters
    ----------
    x
        Positions, shape (N, dim), a floating torch tensor or numpy array (numpy is
        converted, sharing memory where possible). Particle systems use flat positions
        in nm (reduced length units).
    log_weights
        Unnormalised importance log-weights, shape (N,), or None for an unweighted set.
    system
        The system's registry name, or a :class:`~physsample.systems.System` (its name
        is stored, and its mdtraj topology if it has one).
    metadata
        JSON-serialisable dict: settings, diagnostics, wall time, energy evaluations.
        It is stored as its JSON round trip (tuples become lists, numpy scalars become
        Python numbers), so a saved and reloaded copy compares equal.

    Attributes
    ----------
    x : torch.Tensor
        (N, dim).
    log_weights : torch.Tensor or None
        (N,).
    system : str or None
        The system's name.
    metadata : dict
    """

    def __init__(
        self,
        x: torch.Tensor | np.ndarray,
        log_weights: torch.Tensor | np.ndarray | None = None,
        system: Any = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> None:
        self.x = _check_x(x)
        self.log_weights = _check_log_weights(log_weights, self.x)
        self.system = _name_of(system)
        self.metadata = _as_metadata(metadata)
        self._topology = None if system is None or isinstance(system, str) else _topology_of(system)
        if self._topology is not None:
            _spatial_dim(self.dim, self._topology)

    # -- basic properties -----------------------------------------------------------
    def __len__(self) -> int:
        return self.x.shape[0]

    @property
    def dim(self) -> int:
        return self.x.shape[1]

    @property
    def device(self) -> torch.device:
        return self.x.device

    @property
    def topology(self):
        """The mdtraj topology of the system, if known, else None."""
        return self._topology

    def __repr__(self) -> str:
        weighted = "weighted" if self.log_weights is not None else "unweighted"
        return (
            f"Samples(n={len(self)}, dim={self.dim}, system={self.system!r}, {weighted}, "
            f"dtype={self.x.dtype}, device={self.device})"
        )

    def _like(self, x, log_weights, metadata) -> Samples:
        """A new Samples with this one's system name and topology."""
        out = Samples(x, log_weights, self.system, metadata)
        out._topology = self._topology
        return out

    def to(self, device: torch.device | str) -> Samples:
        """A copy on ``device``."""
        lw = None if self.log_weights is None else self.log_weights.to(device)
        return self._like(self.x.to(device), lw, self.metadata)

    # -- weights --------------------------------------------------------------------
    def weights(self) -> torch.Tensor:
        """Self-normalised weights w_i = exp(lw_i) / sum_j exp(lw_j), shape (N,).

        Uniform, 1/N, if there are no log-weights.
        """
        if self.log_weights is None:
            return torch.full(
                (len(self),), 1.0 / max(len(self), 1), dtype=self.x.dtype, device=self.device
            )
        return torch.softmax(self.log_weights, dim=0)

    def ess(self) -> float:
        """Kish effective sample size 1 / sum_i w_i^2 of the self-normalised weights."""
        w = self.weights().double()
        return float(1.0 / (w * w).sum())

    # -- selection ------------------------------------------------------------------
    def subset(self, idx: Any) -> Samples:
        """The samples at ``idx``: a slice, a boolean mask (N,), or integer indices."""
        if isinstance(idx, int):
            idx = [idx]
        if isinstance(idx, (np.ndarray, Sequence)) and not isinstance(idx, (str, bytes)):
            idx = torch.as_tensor(np.asarray(idx))
        if isinstance(idx, torch.Tensor):
            idx = idx.to(self.device)
        lw = None if self.log_weights is None else self.log_weights[idx]
        return self._like(self.x[idx], lw, self.metadata)

    def resample(self, n: int, generator: torch.Generator | None = None) -> Samples:
        """Multinomial resampling by weight into ``n`` unweighted samples.

        Indices are drawn i.i.d. with probabilities :meth:`weights` (on the samples'
        device, so ``generator`` must live there). The metadata gains a ``"resampled"``
        entry with the original size and Kish ESS.
        """
        if len(self) == 0:
            raise ShapeError("Samples.resample: cannot resample an empty set")
        idx = torch.multinomial(
            self.weights().double(), int(n), replacement=True, generator=generator
        )
        metadata = dict(self.metadata, resampled={"from_n": len(self), "kish_ess": self.ess()})
        return self._like(self.x[idx], None, metadata)

    @staticmethod
    def concatenate(parts: Sequence[Samples]) -> Samples:
        """Stack several sets of the same system along N.

        Log-weights are kept if every part has them (they must then be on a common
        scale) and dropped if none has; mixing the two is an error. The metadata is
        ``{"concatenated": [part.metadata, ...]}``.
        """
        parts = list(parts)
        if not parts:
            raise ShapeError("Samples.concatenate: need at least one Samples")
        names = {p.system for p in parts if p.system is not None}
        if len(names) > 1:
            raise ConfigError(f"Samples.concatenate: parts come from different systems {names}")
        if len({p.dim for p in parts}) > 1:
            raise ShapeError(f"Samples.concatenate: dims differ, {[p.dim for p in parts]}")
        weighted = [p.log_weights is not None for p in parts]
        if any(weighted) and not all(weighted):
            raise ConfigError(
                "Samples.concatenate: some parts have log_weights and some do not; give "
                "unweighted parts zero log-weights on the same scale first"
            )
        lw = torch.cat([p.log_weights for p in parts]) if all(weighted) else None
        out = Samples(
            torch.cat([p.x for p in parts]),
            lw,
            names.pop() if names else None,
            {"concatenated": [p.metadata for p in parts]},
        )
        out._topology = next((p._topology for p in parts if p._topology is not None), None)
        return out

    # -- mdtraj -----------------------------------------------------------------------
    def to_mdtraj(self, system: Any = None):
        """An ``mdtraj.Trajectory`` of the samples (positions in nm, float32).

        Parameters
        ----------
        system
            A particle system (anything with ``topology()``); defaults to the one the
            samples were made with or loaded from. 2-D systems are embedded at z = 0.

        Raises
        ------
        TopologyError
            If no topology is known, e.g. for a Gaussian mixture.
        """
        import mdtraj

        topology = self._topology if system is None else _topology_of(system)
        if topology is None:
            what = self.system if system is None else getattr(system, "name", system)
            raise TopologyError(
                f"Samples.to_mdtraj: system {what!r} has no topology; only particle "
                "systems (ParticleSystem, OpenMM systems) convert to mdtraj"
            )
        return mdtraj.Trajectory(_embed_3d(self.x, topology), topology)

    # -- files ------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> Path:
        """Write the samples to one HDF5 file, atomically; returns the path.

        The file is written to a temporary file in the same folder and moved over
        ``path`` with ``os.replace``, so a crash never leaves a partial file and never
        destroys an existing one. See the module docstring for the layout.
        """
        path = Path(path)
        # the .h5 ending keeps mdtraj from warning about the temporary name
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp.h5", dir=path.parent)
        os.close(fd)
        try:
            self._write(tmp)
            os.chmod(tmp, path.stat().st_mode & 0o777 if path.exists() else 0o644)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        return path

    def _write(self, filename: str) -> None:
        import tables

        mode = "w"
        if self._topology is not None and len(self) > 0:
            _write_mdtraj(filename, self.x, self._topology)
            mode = "a"
        with tables.open_file(filename, mode) as h5:
            group = h5.create_group("/", _GROUP, "physsample samples")
            group._v_attrs.format = _FORMAT
            group._v_attrs.format_version = _FORMAT_VERSION
            group._v_attrs.system = "" if self.system is None else self.system
            group._v_attrs.has_system = self.system is not None
            group._v_attrs.x_dtype = _dtype_name(self.x)
            h5.create_array(group, "x", obj=_to_numpy(self.x))
            if self.log_weights is not None:
                group._v_attrs.log_weights_dtype = _dtype_name(self.log_weights)
                h5.create_array(group, "log_weights", obj=_to_numpy(self.log_weights))
            text = json.dumps(self.metadata, default=_json_default).encode("utf-8")
            h5.create_array(group, "metadata_json", obj=np.frombuffer(text, dtype=np.uint8))

    @classmethod
    def load(cls, path: str | os.PathLike) -> Samples:
        """Read samples written by :meth:`save`.

        Raises
        ------
        SamplesFileError
            If the file is missing, is not HDF5, is truncated, or was not written by
            :meth:`save` (a plain mdtraj trajectory opens with ``mdtraj.load``).
        """
        path = Path(path)
        if not path.is_file():
            raise SamplesFileError(f"{path}: no such samples file")
        try:
            out = _read(path)
        except SamplesFileError:
            raise
        except Exception as err:  # tables / HDF5 raise many kinds on bad files
            raise SamplesFileError(
                f"{path}: cannot read samples, the file is damaged or not HDF5 ({_one_line(err)})"
            ) from err
        return out


def _write_mdtraj(filename: str, x: torch.Tensor, topology) -> None:
    from mdtraj.formats import HDF5TrajectoryFile

    xyz = _embed_3d(x, topology)
    with HDF5TrajectoryFile(filename, mode="w") as f:
        f.topology = topology
        f.write(coordinates=xyz, time=np.arange(xyz.shape[0], dtype=np.float32))


def _read(path: Path) -> Samples:
    import tables

    with tables.open_file(str(path), "r") as h5:
        if (
            f"/{_GROUP}" not in h5
            or getattr(h5.get_node(f"/{_GROUP}")._v_attrs, "format", None) != _FORMAT
        ):
            raise SamplesFileError(
                f"{path}: not a physsample samples file (no /{_GROUP} group); a plain "
                "mdtraj trajectory opens with mdtraj.load"
            )
        group = h5.get_node(f"/{_GROUP}")
        attrs = group._v_attrs
        x = torch.from_numpy(group.x.read()).to(getattr(torch, str(attrs.x_dtype)))
        lw = None
        if "log_weights" in group:
            lw = torch.from_numpy(group.log_weights.read())
            lw = lw.to(getattr(torch, str(attrs.log_weights_dtype)))
        metadata = json.loads(group.metadata_json.read().tobytes().decode("utf-8"))
        system = str(attrs.system) if bool(attrs.has_system) else None
        has_topology = "/topology" in h5
    out = Samples(x, lw, system, metadata)
    if has_topology:
        from mdtraj.formats import HDF5TrajectoryFile

        with HDF5TrajectoryFile(str(path), mode="r") as f:
            out._topology = f.topology
    return out
