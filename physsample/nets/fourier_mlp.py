"""A multilayer perceptron control ``u(t, x)`` with a Fourier embedding of time.

This is the control network of path integral samplers (PIS, DDS, DIS): time enters
through sines and cosines of ``t`` at geometrically spaced frequencies, the positions
through a linear layer, and the two are added before a stack of hidden layers. The
last layer is zero-initialised, so an untrained network is exactly the zero control
and the sampler starts out as its reference process.

With ``score_input=True`` the network also takes the target score
``s = grad log p(x) = -grad energy(x)`` and uses the score-informed form of PIS:

    u(t, x) = MLP(t, x) + MLP_t(t) * s,

where ``MLP_t(t)`` is a second time-only network that outputs one gain per coordinate
(shape ``(B, dim)``), also zero-initialised in its last layer.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from physsample.errors import ConfigError, ShapeError

__all__ = ["FourierMLP"]

_ACTIVATIONS = {"gelu": nn.GELU, "silu": nn.SiLU, "relu": nn.ReLU, "tanh": nn.Tanh}


def _activation(name: str) -> nn.Module:
    try:
        return _ACTIVATIONS[name]()
    except KeyError:
        known = ", ".join(_ACTIVATIONS)
        raise ConfigError(f"activation '{name}' is not known; use one of {known}") from None


def _zero_linear(n_in: int, n_out: int) -> nn.Linear:
    layer = nn.Linear(n_in, n_out)
    nn.init.zeros_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


class FourierEmbedding(nn.Module):
    """``t -> [sin(2 pi f_k t), cos(2 pi f_k t)]`` for ``n_frequencies`` fixed frequencies.

    The frequencies are spaced geometrically from 1/2 to ``max_frequency`` (in units of
    1/time), so that times in [0, 1] are resolved both coarsely and finely.
    Output shape ``(B, 2 * n_frequencies)``.
    """

    def __init__(self, n_frequencies: int, max_frequency: float = 64.0):
        super().__init__()
        freqs = torch.logspace(math.log10(0.5), math.log10(max_frequency), n_frequencies)
        self.register_buffer("angular", 2 * math.pi * freqs)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        phase = t[:, None] * self.angular
        return torch.cat([phase.sin(), phase.cos()], dim=-1)


class FourierMLP(nn.Module):
    """Control network ``u(t, x)`` of shape ``(B, dim)``, exactly zero at initialisation.

    Parameters
    ----------
    dim
        Number of coordinates of ``x`` (``n_particles * spatial_dim`` for particles).
    hidden
        Width of the hidden layers.
    n_layers
        Number of hidden layers after the merge of the time and position embeddings.
    n_frequencies
        Number of Fourier frequencies of the time embedding (``2 * n_frequencies``
        features).
    score_input
        If True, the network is called as ``net(t, x, score=s)`` and returns
        ``MLP(t, x) + MLP_t(t) * s`` (the score-informed PIS control).
    activation
        ``"gelu"``, ``"silu"``, ``"relu"`` or ``"tanh"``.

    Examples
    --------
    >>> net = FourierMLP(dim=8)
    >>> net(torch.rand(5), torch.randn(5, 8)).abs().max().item()
    0.0
    """

    def __init__(
        self,
        dim: int,
        hidden: int = 128,
        n_layers: int = 3,
        n_frequencies: int = 16,
        score_input: bool = False,
        activation: str = "gelu",
    ):
        super().__init__()
        if dim < 1 or hidden < 1 or n_layers < 1 or n_frequencies < 1:
            raise ConfigError(
                f"FourierMLP needs positive sizes, got dim={dim}, hidden={hidden}, "
                f"n_layers={n_layers}, n_frequencies={n_frequencies}"
            )
        self.dim = dim
        self.score_input = score_input
        self.time_embed = nn.Sequential(
            FourierEmbedding(n_frequencies),
            nn.Linear(2 * n_frequencies, hidden),
            _activation(activation),
            nn.Linear(hidden, hidden),
        )
        self.x_embed = nn.Linear(dim, hidden)
        body: list[nn.Module] = []
        for _ in range(n_layers):
            body += [_activation(activation), nn.Linear(hidden, hidden)]
        self.body = nn.Sequential(*body, _activation(activation), _zero_linear(hidden, dim))
        self.score_gain = None
        if score_input:
            self.score_gain = nn.Sequential(
                FourierEmbedding(n_frequencies),
                nn.Linear(2 * n_frequencies, hidden),
                _activation(activation),
                nn.Linear(hidden, hidden),
                _activation(activation),
                _zero_linear(hidden, dim),
            )

    def forward(
        self, t: torch.Tensor | float, x: torch.Tensor, score: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Evaluate the control.

        Parameters
        ----------
        t
            Times, shape ``(B,)``, or a scalar shared by the batch.
        x
            Positions, shape ``(B, dim)``.
        score
            Target score ``-grad energy(x)``, shape ``(B, dim)``; required exactly when
            the network was built with ``score_input=True``.

        Returns
        -------
        torch.Tensor
            Control, shape ``(B, dim)``, dtype and device of ``x``.
        """
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ShapeError(f"FourierMLP expects x of shape (B, {self.dim}), got {tuple(x.shape)}")
        t = self._time_rows(t, x)  # (B,), or (1,) for a time shared by the batch
        out = self.body(self.x_embed(x) + self.time_embed(t))
        if self.score_gain is None:
            if score is not None:
                raise ConfigError("score given to a FourierMLP built without score_input=True")
            return out
        if score is None:
            raise ConfigError("this FourierMLP has score_input=True; call it as net(t, x, score=s)")
        if score.shape != x.shape:
            raise ShapeError(
                f"score must have the shape of x {tuple(x.shape)}, got {tuple(score.shape)}"
            )
        return out + self.score_gain(t) * score

    @staticmethod
    def _broadcast_time(t: torch.Tensor | float, x: torch.Tensor) -> torch.Tensor:
        """t as a (B,) tensor in x's dtype and device (a scalar is expanded)."""
        return FourierMLP._time_rows(t, x).expand(x.shape[0])

    @staticmethod
    def _time_rows(t: torch.Tensor | float, x: torch.Tensor) -> torch.Tensor:
        """The rows of t to embed: (B,), or (1,) when one time is shared by the batch.

        A scalar, or a (B,) tensor expanded from one (stride 0, as the sampler's step
        loop passes ``t_k.expand(B)``), is embedded once and broadcast over the batch;
        a row's embedding does not depend on the others, so the output equals the
        per-row one. The test looks at strides only: it never synchronises a GPU.
        """
        if not isinstance(t, torch.Tensor):
            t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
        if t.ndim == 2 and t.shape[1] == 1:
            t = t[:, 0]
        if t.ndim > 1 or (t.ndim == 1 and t.shape != (x.shape[0],)):
            raise ShapeError(
                f"t must be a scalar or of shape ({x.shape[0]},), got {tuple(t.shape)}"
            )
        if t.ndim == 0:
            t = t.reshape(1)
        elif t.shape[0] > 1 and t.stride(0) == 0:
            t = t[:1]
        return t.to(dtype=x.dtype, device=x.device)
