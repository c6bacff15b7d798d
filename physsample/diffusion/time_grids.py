"""Time grids in generative time: t_0 = 0 (prior) < t_1 < ... < t_N = T (target).

Grids are float64 tensors of shape (N + 1,); the path code casts the per-step
coefficients it derives from them to the working dtype once, before the step loop.
"""

from __future__ import annotations

import math

import torch

from physsample.errors import ConfigError, ShapeError

__all__ = ["uniform_grid", "cosine_grid", "check_grid"]


def _check_steps(n_steps: int, horizon: float) -> None:
    if int(n_steps) < 1:
        raise ConfigError(f"n_steps must be at least 1, got {n_steps}")
    if not float(horizon) > 0.0:
        raise ConfigError(f"horizon must be positive, got {horizon}")


def uniform_grid(
    n_steps: int, horizon: float = 1.0, device: torch.device | str | None = None
) -> torch.Tensor:
    """Equally spaced times t_k = k T / N.

    Returns
    -------
    torch.Tensor
        Shape (n_steps + 1,), float64.
    """
    _check_steps(n_steps, horizon)
    k = torch.arange(int(n_steps) + 1, dtype=torch.float64, device=device)
    return k * (float(horizon) / int(n_steps))


def cosine_grid(
    n_steps: int,
    horizon: float = 1.0,
    ends: str = "both",
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Cosine-spaced times, finer near the ends where the dynamics is stiff.

    With r = k / N:

    - ``ends="both"``: t_k = T (1 - cos(pi r)) / 2, fine at the prior and the target;
    - ``ends="target"``: t_k = T sin(pi r / 2), fine at the target end only.

    Returns
    -------
    torch.Tensor
        Shape (n_steps + 1,), float64, with t_0 = 0 and t_N = T exactly.
    """
    _check_steps(n_steps, horizon)
    r = torch.arange(int(n_steps) + 1, dtype=torch.float64, device=device) / int(n_steps)
    if ends == "both":
        t = 0.5 * (1.0 - torch.cos(math.pi * r))
    elif ends == "target":
        t = torch.sin(0.5 * math.pi * r)
    else:
        raise ConfigError(f"cosine_grid: ends must be 'both' or 'target', got {ends!r}")
    t[0], t[-1] = 0.0, 1.0
    return t * float(horizon)


def check_grid(grid: torch.Tensor, horizon: float) -> torch.Tensor:
    """Return ``grid`` if it is 1-D, strictly increasing, from 0 to ``horizon``.

    Runs once when a sampler is built (it reads the grid on the host).

    Raises
    ------
    ShapeError
        If the grid is not a 1-D tensor of at least two times.
    ConfigError
        If it does not increase strictly from 0 to ``horizon``.
    """
    if not isinstance(grid, torch.Tensor) or grid.ndim != 1 or grid.shape[0] < 2:
        raise ShapeError("a time grid must be a 1-D tensor (n_steps + 1,) with n_steps >= 1")
    g = grid.detach().to("cpu", torch.float64)
    if not bool(torch.all(g[1:] > g[:-1])):
        raise ConfigError("the time grid must be strictly increasing")
    if abs(float(g[0])) > 1e-12 or abs(float(g[-1]) - float(horizon)) > 1e-9 * max(1.0, horizon):
        raise ConfigError(
            f"the time grid must run from 0 to the schedule's horizon {horizon}; "
            f"got [{float(g[0])}, {float(g[-1])}]"
        )
    return grid
