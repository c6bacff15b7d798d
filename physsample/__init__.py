"""physsample: sampling molecular and particle systems with learned diffusion processes."""

from __future__ import annotations

from physsample import diffusion, mcmc, methods, nets, systems
from physsample.errors import UserError
from physsample.samples import Samples

__all__ = [
    "systems",
    "mcmc",
    "diffusion",
    "methods",
    "nets",
    "analysis",
    "Samples",
    "UserError",
]
__version__ = "0.1.0"


def __getattr__(name: str):
    """``ps.analysis`` on first use: it imports POT, matplotlib and numba (about 2.5 s)."""
    if name == "analysis":
        import importlib

        return importlib.import_module("physsample.analysis")
    raise AttributeError(f"module 'physsample' has no attribute {name!r}")
