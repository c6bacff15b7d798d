"""Run-time choices shared by the library and the entry point: device and seeds."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

import torch

from physsample.errors import ConfigError

__all__ = ["resolve_device", "make_generator", "write_text_atomic"]


def resolve_device(name: str | torch.device | None = "auto") -> torch.device:
    """``"auto"`` (or None) gives CUDA when available, else CPU; other names are checked.

    Raises
    ------
    ConfigError
        If the device name is not valid or asks for CUDA on a machine without it.
    """
    if name is None or str(name) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError) as err:
        raise ConfigError(
            f"device '{name}' is not a valid torch device; use auto, cpu or cuda"
        ) from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device '{name}' asked for, but CUDA is not available; use device=cpu")
    return device


def make_generator(seed: int | None, device: torch.device | str = "cpu") -> torch.Generator:
    """A ``torch.Generator`` on ``device`` seeded with ``seed`` (fresh entropy if None)."""
    generator = torch.Generator(device=device)
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(int(seed))
    return generator


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file in the same folder and a rename.

    A reader never sees a half-written file, and a killed writer leaves the old file
    (or none) in place. The file gets mode 0644 (``mkstemp`` creates 0600).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "w") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path
