"""physsample: sampling molecular and particle systems with learned diffusion processes."""

from __future__ import annotations

from physsample import diffusion, mcmc, methods, nets, systems
from physsample.errors import UserError
from physsample.samples import Samples

__all__ = ["systems", "mcmc", "diffusion", "methods", "nets", "Samples", "UserError"]
__version__ = "0.1.0"
