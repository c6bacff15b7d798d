"""physsample: sampling molecular and particle systems with learned diffusion processes."""

from __future__ import annotations

from physsample import systems
from physsample.errors import UserError

__all__ = ["systems", "UserError"]
__version__ = "0.1.0"
