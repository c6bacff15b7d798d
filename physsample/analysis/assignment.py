"""Batched linear assignment: many small square problems solved at once.

:func:`batched_assignment` solves B independent n x n minimum-cost assignment problems.
With numba (a dependency of openmmtools, so normally installed) it runs a compiled
shortest-augmenting-path solver (the Hungarian method with dual potentials, O(n^3) per
problem) in parallel over the batch; without numba it calls
``scipy.optimize.linear_sum_assignment`` once per problem. Both give an optimal
assignment; where several are optimal they may pick different ones.

The compiled single-problem solver :func:`assign_inplace` is also called from the
pair-alignment kernels of :mod:`physsample.analysis.alignment`.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment

from physsample.errors import ShapeError

__all__ = ["batched_assignment", "have_numba", "assign_inplace", "jit"]

try:  # numba is optional: without it the kernels run as (slow) plain Python
    import numba
except ImportError:  # pragma: no cover - exercised only where numba is missing
    numba = None


def have_numba() -> bool:
    """True if the compiled kernels are available."""
    return numba is not None


def jit(parallel: bool = False):
    """``numba.njit`` with caching (and ``parallel``) if numba is installed, else identity."""

    def wrap(fn):
        if numba is None:  # pragma: no cover
            return fn
        return numba.njit(cache=True, nogil=True, parallel=parallel)(fn)

    return wrap


prange = numba.prange if numba is not None else range


@jit()
def assign_inplace(cost, out, dual, row_of, came_from, dist, done) -> None:
    """Optimal assignment of one n x n ``cost``, written into ``out`` (row -> column).

    Shortest augmenting paths with dual potentials: rows are added one at a time; a
    Dijkstra-like search over reduced costs ``cost[i, j] - u[i] - v[j]`` finds the
    cheapest augmenting path from the new row to a free column, the potentials are
    updated so that reduced costs stay non-negative, and the path is flipped. Column
    index ``n`` is a virtual start column.

    Parameters
    ----------
    cost
        (n, n) float64.
    out
        (n,) int64, receives the column of each row.
    dual
        (2, n + 1) float64 workspace (row and column potentials).
    row_of, came_from
        (n + 1,) int64 workspaces.
    dist
        (n + 1,) float64 workspace.
    done
        (n + 1,) bool workspace.
    """
    n = cost.shape[0]
    for j in range(n + 1):
        dual[0, j] = 0.0
        dual[1, j] = 0.0
        row_of[j] = -1
    for row in range(n):
        row_of[n] = row
        col = n
        for j in range(n + 1):
            dist[j] = np.inf
            done[j] = False
        while True:
            done[col] = True
            i = row_of[col]
            delta = np.inf
            nxt = -1
            for j in range(n):
                if not done[j]:
                    reduced = cost[i, j] - dual[0, i] - dual[1, j]
                    if reduced < dist[j]:
                        dist[j] = reduced
                        came_from[j] = col
                    if dist[j] < delta:
                        delta = dist[j]
                        nxt = j
            for j in range(n + 1):
                if done[j]:
                    dual[0, row_of[j]] += delta
                    dual[1, j] -= delta
                else:
                    dist[j] -= delta
            col = nxt
            if row_of[col] == -1:
                break
        while col != n:  # flip the path back to the virtual column
            prev = came_from[col]
            row_of[col] = row_of[prev]
            col = prev
    for j in range(n):
        out[row_of[j]] = j


@jit(parallel=True)
def _solve_batch(costs, out):  # pragma: no cover - compiled
    n = costs.shape[1]
    for b in prange(costs.shape[0]):
        dual = np.empty((2, n + 1))
        row_of = np.empty(n + 1, dtype=np.int64)
        came_from = np.empty(n + 1, dtype=np.int64)
        dist = np.empty(n + 1)
        done = np.empty(n + 1, dtype=np.bool_)
        assign_inplace(costs[b], out[b], dual, row_of, came_from, dist, done)


def batched_assignment(costs: np.ndarray) -> np.ndarray:
    """Minimum-cost assignments of a batch of square cost matrices.

    Parameters
    ----------
    costs
        Shape (B, n, n), finite; ``costs[b, i, j]`` is the cost of giving row i the
        column j in problem b.

    Returns
    -------
    np.ndarray
        Shape (B, n), int64: ``perm[b, i]`` is the column assigned to row i, so that
        ``costs[b, i, perm[b, i]].sum()`` is minimal.

    Examples
    --------
    >>> batched_assignment(np.array([[[4.0, 1.0], [2.0, 8.0]]]))
    array([[1, 0]])
    """
    costs = np.ascontiguousarray(costs, dtype=np.float64)
    if costs.ndim != 3 or costs.shape[1] != costs.shape[2]:
        raise ShapeError(f"batched_assignment: need costs of shape (B, n, n), got {costs.shape}")
    if not np.all(np.isfinite(costs)):
        raise ShapeError("batched_assignment: costs must be finite")
    out = np.empty(costs.shape[:2], dtype=np.int64)
    if costs.shape[0] == 0 or costs.shape[1] == 0:
        return out
    if numba is not None:
        _solve_batch(costs, out)
    else:  # pragma: no cover - exercised only where numba is missing
        for b in range(costs.shape[0]):
            out[b] = linear_sum_assignment(costs[b])[1]
    return out
