"""Control networks ``net(t, x) -> (B, dim)`` for the diffusion samplers."""

from __future__ import annotations

from physsample.nets.egnn import EGNN
from physsample.nets.fourier_mlp import FourierMLP

__all__ = ["FourierMLP"]
__all__ += ["E3NNControl", "EGNN"]


def __getattr__(name: str):
    # E3NNControl is imported on first use: importing e3nn takes about two seconds
    if name == "E3NNControl":
        from physsample.nets.e3nn_control import E3NNControl

        return E3NNControl
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
