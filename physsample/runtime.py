"""Run-time choices shared by the library and the entry point: device and seeds."""

from __future__ import annotations

import torch

from physsample.errors import ConfigError

__all__ = ["resolve_device", "make_generator"]


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
