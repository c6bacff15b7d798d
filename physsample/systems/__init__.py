"""Energy functions: the ``System`` base class and the registry of named systems.

Example
-------
>>> import physsample as ps
>>> system = ps.systems.get("dw4")
>>> system.energy(system.default_positions()[None]).shape
torch.Size([1])
"""

from __future__ import annotations

from physsample.systems.alanine_dipeptide import AlanineDipeptide
from physsample.systems.base import ParticleSystem, System
from physsample.systems.openmm_system import OpenMMSystem
from physsample.systems.registry import available, get, register

__all__ = [
    "System",
    "ParticleSystem",
    "OpenMMSystem",
    "AlanineDipeptide",
    "available",
    "get",
    "register",
]
