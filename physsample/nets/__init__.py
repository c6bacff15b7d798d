"""Control networks ``net(t, x) -> (B, dim)`` for the diffusion samplers."""

from __future__ import annotations

from physsample.nets.fourier_mlp import FourierMLP

__all__ = ["FourierMLP"]
