"""One-dimensional pieces shared by the product-form synthetic targets.

:class:`PolynomialWell` is a 1-D potential u(x) = sum_k c_k x^k (even degree, positive
leading coefficient) with its exact log normaliser log ∫ exp(-u(x)) dx by composite
Gauss-Legendre quadrature and an exact rejection sampler. Manywell and the multi
double well are products of such wells and of standard Gaussians.

The rejection envelope is proven, not fitted: on each bin of a grid it is
exp(-min u), with the minimum found exactly from the end points and the real roots of
u' inside the bin; beyond the grid, where u is convex and increasing away from the
centre, it is the exponential exp(-u(b) - |u'(b)| |x - b|) given by the tangent line
at the edge ``b``. Every accepted draw therefore has exactly the density
exp(-u) / Z.

Energies are dimensionless (reduced, in kT); positions are in the system's length unit.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from physsample.errors import ConfigError

__all__ = ["PolynomialWell", "polyval", "sampling_device", "product_grid"]

_CUTOFF = 45.0  # u - min u beyond the quadrature range: exp(-45) ~ 3e-20
_N_BINS = 2048  # bins of the piecewise-constant rejection envelope
_GL_NODES, _GL_WEIGHTS = np.polynomial.legendre.leggauss(24)


def polyval(coeffs: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Evaluate sum_k coeffs[k] x^k elementwise by Horner's rule.

    Parameters
    ----------
    coeffs
        Shape (degree + 1,), lowest power first; cast to ``x``'s dtype and device.
    x
        Any shape.

    Returns
    -------
    torch.Tensor
        Same shape, dtype and device as ``x``.
    """
    c = coeffs.to(dtype=x.dtype, device=x.device)
    out = torch.zeros_like(x) + c[-1]
    for k in range(c.shape[0] - 2, -1, -1):
        out = out * x + c[k]
    return out


def sampling_device(generator: torch.Generator | None, default: torch.device) -> torch.device:
    """Device on which to draw random numbers: the generator's, else ``default``.

    Draws are made where the generator lives and then moved to the system's device,
    so a CPU generator gives the same samples whatever device the system is on.
    """
    return generator.device if generator is not None else torch.device(default)


def product_grid(values: Sequence[float], n: int) -> torch.Tensor:
    """All ``len(values) ** n`` points whose coordinates are taken from ``values``.

    Returns
    -------
    torch.Tensor
        Shape (len(values) ** n, n), float64; the last coordinate varies fastest.
    """
    axis = torch.as_tensor(list(values), dtype=torch.float64)
    if n == 1:
        return axis[:, None].clone()
    return torch.cartesian_prod(*([axis] * n))


class PolynomialWell(torch.nn.Module):
    """A 1-D potential u(x) = sum_k c_k x^k with exact normaliser and sampler.

    Parameters
    ----------
    coeffs
        c_0, c_1, ..., c_p, lowest power first. The degree p must be even and >= 2
        and c_p > 0, so that exp(-u) is integrable.

    Attributes
    ----------
    log_z : float
        log ∫ exp(-u(x)) dx.
    minima : torch.Tensor
        Locations of the local minima of u, ascending, shape (n_minima,), float64.
    lower, upper : float
        Quadrature range; outside it u exceeds its minimum by more than 45 and is
        convex and monotone.

    Examples
    --------
    >>> well = PolynomialWell([0.0, -0.5, -6.0, 0.0, 1.0])  # x^4 - 6 x^2 - 0.5 x
    >>> round(math.exp(well.log_z), 3)
    11784.509
    """

    def __init__(self, coeffs: Sequence[float]) -> None:
        super().__init__()
        c = np.trim_zeros(np.asarray(coeffs, dtype=np.float64), "b")
        if c.size < 3 or (c.size - 1) % 2 or c[-1] <= 0 or not np.all(np.isfinite(c)):
            raise ConfigError(
                f"PolynomialWell needs an even degree >= 2 and a positive leading "
                f"coefficient (lowest power first); got {list(coeffs)}"
            )
        self._c = np.polynomial.Polynomial(c)
        self.register_buffer("coeffs", torch.as_tensor(c))
        self._critical = _real_roots(self._c.deriv())
        self.u_min = float(np.min(self._c(self._critical)))
        self.minima = torch.as_tensor(
            [r for r in self._critical if self._c.deriv(2)(r) > 0], dtype=torch.float64
        )
        self.lower, self.upper = self._range()
        self.log_z = self._log_integral(self.lower, self.upper)
        self._build_envelope()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """u(x) elementwise, same shape, dtype and device as ``x``."""
        return polyval(self.coeffs, x)

    # -- quadrature ---------------------------------------------------------------
    def _range(self) -> tuple[float, float]:
        """An interval outside which u is convex, monotone and above min u + cutoff."""
        turning = np.concatenate([self._critical, _real_roots(self._c.deriv(2)), [0.0]])
        lo, hi = float(turning.min()) - 1.0, float(turning.max()) + 1.0
        while self._c(hi) - self.u_min < _CUTOFF:
            hi += 0.25 * (hi - lo)
        while self._c(lo) - self.u_min < _CUTOFF:
            lo -= 0.25 * (hi - lo)
        return lo, hi

    def _log_integral(self, a: float, b: float, panels: int = 400) -> float:
        """log ∫_a^b exp(-u) dx by composite 24-point Gauss-Legendre quadrature."""
        edges = np.linspace(a, b, panels + 1)
        half = 0.5 * np.diff(edges)[:, None]
        x = (0.5 * (edges[:-1] + edges[1:]))[:, None] + half * _GL_NODES[None, :]
        total = np.sum(half * _GL_WEIGHTS[None, :] * np.exp(-(self._c(x) - self.u_min)))
        return -self.u_min + math.log(total)

    # -- exact sampler ------------------------------------------------------------
    def _build_envelope(self) -> None:
        """Bin edges, bin minima of u, tail slopes and the mass of every envelope piece."""
        edges = np.linspace(self.lower, self.upper, _N_BINS + 1)
        floor = np.minimum(self._c(edges[:-1]), self._c(edges[1:]))
        for r in self._critical:
            inside = (edges[:-1] < r) & (r < edges[1:])
            floor[inside] = np.minimum(floor[inside], self._c(r))
        floor -= 1e-9 * (1.0 + np.abs(floor))  # margin for rounding in roots and evaluation
        self._edges, self._floor = edges, floor
        self._slopes = (-float(self._c.deriv()(self.lower)), float(self._c.deriv()(self.upper)))
        tails = [self._c(self.lower) - self.u_min, self._c(self.upper) - self.u_min]
        tail_mass = [math.exp(-t) / s for t, s in zip(tails, self._slopes, strict=True)]
        bin_mass = np.diff(edges) * np.exp(-(floor - self.u_min))
        self._piece_mass = np.concatenate([bin_mass, tail_mass])
        self.acceptance = math.exp(self.log_z + self.u_min) / float(self._piece_mass.sum())

    def sample(
        self, n: int, generator: torch.Generator | None = None, device: torch.device | str = "cpu"
    ) -> torch.Tensor:
        """Draw ``n`` exact samples of exp(-u)/Z.

        Parameters
        ----------
        n
            Number of samples.
        generator
            Random state; draws are made on its device (else on ``device``).
        device
            Device of the returned tensor.

        Returns
        -------
        torch.Tensor
            Shape (n,), float64, on ``device``.
        """
        dev = sampling_device(generator, torch.device(device))
        accepted = [torch.zeros(0, dtype=torch.float64, device=dev)]
        count = 0
        while count < n:
            batch = int(1.1 * (n - count) / self.acceptance) + 16
            x = self._propose_and_accept(batch, generator, dev)
            accepted.append(x)
            count += x.shape[0]
        return torch.cat(accepted)[:n].to(device)

    def _propose_and_accept(
        self, batch: int, generator: torch.Generator | None, dev: torch.device
    ) -> torch.Tensor:
        """One round of rejection sampling; returns the accepted draws (float64)."""
        f64 = torch.float64
        mass = torch.as_tensor(self._piece_mass, dtype=f64, device=dev)
        piece = torch.multinomial(mass, batch, replacement=True, generator=generator)
        u1, u2 = torch.rand(2, batch, dtype=f64, device=dev, generator=generator)
        edges = torch.as_tensor(self._edges, dtype=f64, device=dev)
        floor = torch.as_tensor(self._floor, dtype=f64, device=dev)
        b = piece.clamp(max=_N_BINS - 1)
        x = edges[b] + u1 * (edges[b + 1] - edges[b])
        envelope = floor[b]
        for k, (edge, sign) in enumerate(((self.lower, -1.0), (self.upper, 1.0))):
            tail = piece == _N_BINS + k
            slope = self._slopes[k]
            step = -torch.log1p(-u1[tail]) / slope
            x[tail] = edge + sign * step
            envelope[tail] = float(self._c(edge)) + slope * step
        u = polyval(torch.as_tensor(self._c.coef, dtype=f64), x)
        keep = u2 < torch.exp(envelope - u)
        return x[keep]


def _real_roots(p: np.polynomial.Polynomial) -> np.ndarray:
    """Real roots of ``p``, ascending, polished by two Newton steps."""
    if p.degree() < 1:
        return np.zeros(0)
    roots = p.roots()
    real = np.sort(roots[np.abs(roots.imag) < 1e-9].real)
    dp = p.deriv()
    for _ in range(2):
        slope = dp(real)
        real = np.where(slope != 0, real - p(real) / np.where(slope != 0, slope, 1.0), real)
    return real
