"""Shared helpers of the network tests: random inputs and random elements of O(d)."""

from __future__ import annotations

import torch

F64 = torch.float64


def inputs(n, d, batch=3, seed=1):
    """Float64 times (batch,), positions and scores (batch, n * d)."""
    g = torch.Generator().manual_seed(seed)
    t = torch.rand(batch, generator=g, dtype=F64)
    x = 1.5 * torch.randn(batch, n * d, generator=g, dtype=F64)
    s = torch.randn(batch, n * d, generator=g, dtype=F64)
    return t, x, s


def orthogonal(d, reflect, seed=2):
    """A random element of O(d): a rotation, composed with a reflection if ``reflect``."""
    g = torch.Generator().manual_seed(seed)
    q, r = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=F64))
    q = q * torch.sign(torch.diagonal(r))
    if torch.det(q) < 0:
        q[:, 0] = -q[:, 0]
    if reflect:
        q = q @ torch.diag(torch.tensor([-1.0] + [1.0] * (d - 1), dtype=F64))
    return q
