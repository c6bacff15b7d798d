"""Named systems: ``get("dw4")``, ``get("gmm40", dim=50)``, ``get("manywell16")``.

Entries are imported lazily, so that asking for a synthetic target does not import
OpenMM-heavy modules it does not need.
"""

from __future__ import annotations

import importlib
import inspect
import re
from collections.abc import Callable
from typing import Any

from physsample.errors import ConfigError, UnknownSystemError
from physsample.systems.base import System

__all__ = ["available", "get", "register"]

# name -> ("module:attribute", default keyword arguments)
_ENTRIES: dict[str, tuple[str | Callable[..., System], dict[str, Any]]] = {
    "dw4": ("physsample.systems.dw4:DoubleWell4", {}),
    "lj13": ("physsample.systems.lennard_jones:LennardJones", {"n_particles": 13}),
    "lj55": ("physsample.systems.lennard_jones:LennardJones", {"n_particles": 55}),
    "manywell32": ("physsample.systems.manywell:Manywell", {"dim": 32}),
    "manywell64": ("physsample.systems.manywell:Manywell", {"dim": 64}),
    "mw5": (
        "physsample.systems.multi_double_well:MultiDoubleWell",
        {"dim": 5, "n_wells": 5, "delta": 4.0},
    ),
    "mw50": (
        "physsample.systems.multi_double_well:MultiDoubleWell",
        {"dim": 50, "n_wells": 5, "delta": 2.0},
    ),
    "gmm25": ("physsample.systems.gaussian_mixture:GridGMM", {}),
    "gmm40": ("physsample.systems.gaussian_mixture:RandomGMM", {"dim": 2}),
    "mos": ("physsample.systems.student_t_mixture:StudentTMixture", {"dim": 2}),
    "funnel": ("physsample.systems.funnel:Funnel", {"dim": 10}),
    "aldp": ("physsample.systems.alanine_dipeptide:AlanineDipeptide", {}),
}

# Families with the dimension in the name, e.g. manywell16.
_PATTERNS: dict[str, tuple[str, str]] = {
    r"manywell(\d+)": ("physsample.systems.manywell:Manywell", "dim"),
    r"lj(\d+)": ("physsample.systems.lennard_jones:LennardJones", "n_particles"),
}


def available() -> list[str]:
    """Names accepted by :func:`get` (families such as ``manywell<d>`` listed once)."""
    return sorted(_ENTRIES)


def register(name: str, factory: Callable[..., System], **defaults: Any) -> None:
    """Add ``factory`` (a System subclass or a function returning one) under ``name``."""
    _ENTRIES[name] = (factory, defaults)


def _resolve(target: str | Callable[..., System]) -> Callable[..., System]:
    if callable(target):
        return target
    module, attribute = target.split(":")
    return getattr(importlib.import_module(module), attribute)


def _lookup(name: str) -> tuple[str | Callable[..., System], dict[str, Any]]:
    if name in _ENTRIES:
        return _ENTRIES[name]
    for pattern, (target, key) in _PATTERNS.items():
        match = re.fullmatch(pattern, name)
        if match:
            return target, {key: int(match.group(1))}
    raise UnknownSystemError(
        f"unknown system '{name}'; available: {', '.join(available())} (also manywell<d> and lj<n>)"
    )


def get(name: str, **overrides: Any) -> System:
    """Build the system registered as ``name``, with keyword ``overrides``.

    Raises
    ------
    UnknownSystemError
        If ``name`` is not registered; the message lists the available names.
    ConfigError
        If an override is not a parameter of the system.
    """
    target, defaults = _lookup(str(name))
    factory = _resolve(target)
    _check_overrides(str(name), factory, overrides)
    system = factory(**{**defaults, **overrides})
    system.name = str(name)
    return system


def _check_overrides(name: str, factory: Callable[..., System], overrides: dict) -> None:
    parameters = inspect.signature(factory).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return
    unknown = sorted(set(overrides) - set(parameters))
    if unknown:
        raise ConfigError(
            f"system '{name}' has no parameter {', '.join(map(repr, unknown))}; "
            f"its parameters are: {', '.join(parameters) or 'none'}"
        )
