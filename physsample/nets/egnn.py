"""E(n)-equivariant graph network (EGNN, Satorras et al. 2021) as a control network.

The plain-torch baseline for :class:`~physsample.nets.E3NNControl`: a standard EGNN of
the kind published diffusion samplers use for DW-4 and LJ-n (details such as the
coordinate normalisation differ between papers). Every particle carries invariant
features ``h_i`` (initialised from a Fourier embedding of time) and a position
``x_i``; one layer is

    m_ij = phi_e(h_i, h_j, |x_i - x_j|^2)
    x_i <- x_i + (n - 1)^-1 sum_{j != i} (x_i - x_j) / (|x_i - x_j| + 1) * phi_x(m_ij)
    h_i <- h_i + phi_h(h_i, sum_{j != i} m_ij)

and the control is the total displacement ``x_L - x_0`` with the centre of mass
removed. The last linear layer of every ``phi_x`` is zero-initialised, so the untrained
control is exactly zero. With ``score_input=True`` the score enters in the
score-informed form ``u_i += phi_s(h_i) * s_i`` (a learned, invariant gain per particle,
zero at initialisation).

The graph is dense ``(B, n, n)``. The first layer of ``phi_e`` acts on the
concatenation ``[h_i, h_j, d_ij^2]``; it is evaluated as ``A h_i + B h_j + c d_ij^2``
(the same linear map, computed per node instead of per edge), which makes this a fair,
fast baseline.
"""

from __future__ import annotations

import torch
from torch import nn

from physsample.errors import ConfigError, ShapeError
from physsample.nets.fourier_mlp import FourierEmbedding, FourierMLP

__all__ = ["EGNN"]


class _EGNNLayer(nn.Module):
    """One EGNN layer; ``update_features=False`` (a last layer whose features nobody
    reads) leaves ``h`` unchanged and has no node MLP."""

    def __init__(self, hidden: int, update_features: bool = True) -> None:
        super().__init__()
        self.edge_in = nn.Linear(2 * hidden + 1, hidden)  # phi_e first layer, on [h_i, h_j, d2]
        self.edge_out = nn.Sequential(nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU())
        self.coord = nn.Sequential(nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, 1))
        nn.init.zeros_(self.coord[-1].weight)
        nn.init.zeros_(self.coord[-1].bias)
        self.node = None
        if update_features:
            self.node = nn.Sequential(
                nn.Linear(2 * hidden, hidden), nn.SiLU(), nn.Linear(hidden, hidden)
            )
        self.hidden = hidden

    def forward(self, h, x, mask, norm: float):
        rel = x[:, :, None, :] - x[:, None, :, :]  # rel[b, i, j] = x_i - x_j
        d2 = (rel**2).sum(dim=-1, keepdim=True)
        w = self.edge_in.weight
        a = h @ w[:, : self.hidden].T + self.edge_in.bias  # receiver part, (B, n, H)
        c = h @ w[:, self.hidden : 2 * self.hidden].T  # sender part
        m = self.edge_out(a[:, :, None] + c[:, None] + d2 * w[:, -1]) * mask
        # d = sqrt(d2 + 1e-12) keeps the gradient finite on the (masked) diagonal
        x = x + norm * (rel / (torch.sqrt(d2 + 1e-12) + 1) * self.coord(m) * mask).sum(dim=2)
        if self.node is not None:
            h = h + self.node(torch.cat([h, m.sum(dim=2)], dim=-1))
        return h, x


class EGNN(nn.Module):
    """EGNN control ``u(t, x)`` of shape ``(B, n_particles * spatial_dim)``.

    Parameters
    ----------
    n_particles, spatial_dim
        The particle system; ``x`` has ``n_particles * spatial_dim`` coordinates.
    hidden
        Width of the invariant features and of the edge, coordinate and node MLPs.
    n_layers
        Number of EGNN layers.
    n_frequencies
        Fourier frequencies of the time embedding.
    score_input
        If True, call as ``net(t, x, score=s)``; adds ``phi_s(h_i) * s_i``.

    Examples
    --------
    >>> net = EGNN(n_particles=4, spatial_dim=2, hidden=16)
    >>> net(torch.rand(5), torch.randn(5, 8)).abs().max().item()
    0.0
    """

    def __init__(
        self,
        n_particles: int,
        spatial_dim: int,
        hidden: int = 64,
        n_layers: int = 3,
        n_frequencies: int = 16,
        score_input: bool = False,
    ) -> None:
        super().__init__()
        if int(n_particles) < 2 or int(spatial_dim) < 1:
            raise ConfigError(
                f"EGNN needs n_particles >= 2 and spatial_dim >= 1, got {n_particles}, "
                f"{spatial_dim}"
            )
        if min(hidden, n_layers, n_frequencies) < 1:
            raise ConfigError(
                f"EGNN needs positive sizes, got hidden={hidden}, n_layers={n_layers}, "
                f"n_frequencies={n_frequencies}"
            )
        self.n_particles, self.spatial_dim = int(n_particles), int(spatial_dim)
        self.dim = self.n_particles * self.spatial_dim
        self.score_input = score_input
        self.time_embed = nn.Sequential(
            FourierEmbedding(n_frequencies),
            nn.Linear(2 * n_frequencies, hidden),
            nn.SiLU(),
            nn.Linear(hidden, hidden),
        )
        self.layers = nn.ModuleList(
            _EGNNLayer(hidden, update_features=k < n_layers - 1 or score_input)
            for k in range(n_layers)
        )
        self.score_gain = None
        if score_input:
            self.score_gain = nn.Sequential(
                nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, 1)
            )
            nn.init.zeros_(self.score_gain[-1].weight)
            nn.init.zeros_(self.score_gain[-1].bias)
        n = self.n_particles
        self.register_buffer("_mask", (1 - torch.eye(n))[None, :, :, None], persistent=False)

    def forward(
        self, t: torch.Tensor | float, x: torch.Tensor, score: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Evaluate the control; shapes as in :meth:`E3NNControl.forward`."""
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ShapeError(
                f"EGNN expects x of shape (B, {self.dim}) for {self.n_particles} particles "
                f"in {self.spatial_dim}-D, got {tuple(x.shape)}"
            )
        _check_score(self.score_input, score, x, "EGNN")
        t = FourierMLP._broadcast_time(t, x)
        b, n = x.shape[0], self.n_particles
        pos0 = x.reshape(b, n, self.spatial_dim)
        pos0 = pos0 - pos0.mean(dim=1, keepdim=True)
        h = self.time_embed(t)[:, None, :].expand(b, n, -1)
        pos, mask = pos0, self._mask.to(x.dtype)
        for layer in self.layers:
            h, pos = layer(h, pos, mask, 1.0 / (n - 1))
        out = pos - pos0
        if self.score_gain is not None:
            out = out + self.score_gain(h) * score.reshape(b, n, self.spatial_dim)
        out = out - out.mean(dim=1, keepdim=True)
        return out.reshape(b, self.dim)


def _check_score(score_input: bool, score, x: torch.Tensor, name: str) -> None:
    """Raise unless ``score`` is given exactly when ``score_input``, with the shape of ``x``."""
    if not score_input:
        if score is not None:
            raise ConfigError(f"score given to a {name} built without score_input=True")
        return
    if score is None:
        raise ConfigError(f"this {name} has score_input=True; call it as net(t, x, score=s)")
    if score.shape != x.shape:
        raise ShapeError(
            f"score must have the shape of x {tuple(x.shape)}, got {tuple(score.shape)}"
        )
