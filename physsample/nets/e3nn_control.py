"""An O(3)-equivariant control network for particle systems, built on e3nn.

``E3NNControl`` is a message-passing network on the fully connected particle graph.
Every particle carries ``channels`` copies of each irrep ``0e, 1o, 2e, ...`` up to
``lmax`` (scalars, vectors, ...). One layer is

    m_i = (n - 1)^(-1/2) sum_{j != i} TP(h_j, Y(r_ij); w(|r_ij|))     (convolution)
    h_i <- h_i + Gate(Linear([h_i, m_i]))                              (update)

with ``r_ij = x_j - x_i`` and

- ``Y(r) = (1, sqrt(3) r)``: e3nn's spherical harmonics of degree 0 and 1 of the
  relative vector, unnormalised (``normalize=False``: the solid harmonics
  ``|r|^l Y^l(r / |r|)``, the radial weights absorb the factor ``|r|``);
- ``TP``: an ``o3.TensorProduct`` with one weight per channel and path (``"uvu"``),
  restricted to the paths whose output has natural parity (for ``lmax = 1``: scalar x
  scalar, scalar x vector, vector x scalar and the dot product; no cross product);
- ``w(d) = phi(d) @ U``: per-edge weights, linear in radial features
  ``phi(d) = [silu(A g(d) + a), 1]`` of a Gaussian basis ``g`` of the distance, shared
  by the layers (a radial MLP with one hidden layer of width ``radial_hidden`` whose
  last layer ``U`` belongs to each interaction layer).

Inputs: the time (a Fourier embedding and an MLP, ``0e`` scalars), the positions
relative to the centre of mass (``1o``) and their norms (``0e``) and, optionally, the
target score (``1o``). Output: one ``1o`` vector per particle from an ``o3.Linear`` that
is zero-initialised (the untrained control is exactly zero while the gradient of that
last layer is not), with the centre of mass removed. The network is equivariant under
rotations, reflections and permutations of the particles and invariant under
translations. Two-dimensional systems (DW-4) are embedded at z = 0; the network is
equivariant under the reflection z -> -z, so its output has no z component, and that
(zero) component is dropped.

Speed. The graph is kept in a dense ``(batch, n, n)`` layout rather than an edge list.
``Y`` is linear in ``r_ij = x_j - x_i``, so the neighbour sum splits into sums over
``j`` of node quantities and a correction at ``i``:

    sum_j w_ij TP(h_j, x_j - x_i) = sum_j w_ij TP(h_j, x_j) - TP(sum_j w_ij h_j, x_i),

and no per-edge vector or spherical harmonic is ever stored. :class:`DenseConvolution`
evaluates this in one of several ways, all giving the same numbers (``kernel``):

- ``"batch_last"`` (``lmax = 1``; the default below 24 particles): per-edge weights and
  features laid out with the batch innermost, the sum over ``j`` a loop of
  multiply-adds that are contiguous along the batch;
- ``"factorised"`` (``lmax = 1``; the default from 24 particles): since ``w`` is linear
  in ``phi``, ``sum_j w_ij f_j = U . (Phi @ f)_i`` with ``Phi[k, i, j] = phi_k(d_ij)``:
  one batched matrix product per layer, no per-edge weights at all;
- ``"dense"`` (any ``lmax``; the default for ``lmax >= 2``): per-edge weights and
  batched matrix products, the couplings from e3nn's Wigner 3j symbols;
- ``"e3nn"``: e3nn's ``TensorProduct`` on broadcast ``(B, n, n, .)`` tensors, the
  readable reference (slow; memory ``B n^2 irreps.dim``).
"""

from __future__ import annotations

import copy
import math

import torch
from e3nn import o3
from e3nn.math import soft_one_hot_linspace, soft_unit_step
from e3nn.nn import Gate
from torch import nn

from physsample.errors import ConfigError, ShapeError
from physsample.nets.egnn import _check_score
from physsample.nets.fourier_mlp import FourierEmbedding, FourierMLP

__all__ = ["E3NNControl", "DenseConvolution", "natural_irreps"]

KERNELS = ("auto", "batch_last", "factorised", "dense", "e3nn")
FACTORISE_FROM = 24  # kernel="auto" with lmax 1: "factorised" from this many particles on
_SH = o3.Irreps("0e + 1o")  # edge attributes: spherical harmonics of degree 0 and 1
_VECTOR_PATHS = [(0, 0, 0), (0, 1, 1), (1, 0, 1), (1, 1, 0)]  # (l_in, l_sh, l_out) at lmax 1


def natural_irreps(channels: int, lmax: int) -> o3.Irreps:
    """``channels`` copies of each irrep of natural parity, ``0e + 1o + 2e + ...`` to lmax."""
    return o3.Irreps([(channels, (l, (-1) ** l)) for l in range(lmax + 1)])


class _SmallBmm(torch.autograd.Function):
    """``torch.bmm`` whose backward multiplies contiguous matrices.

    On the CPU, the backward of ``torch.bmm`` on many small matrices (transposed views)
    falls back to a loop over the batch, several times slower than the forward; making
    the transposes contiguous first avoids it.
    """

    @staticmethod
    def forward(ctx, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(a, b)
        return torch.bmm(a, b)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        a, b = ctx.saved_tensors
        grad = grad.contiguous()
        grad_a = (
            torch.bmm(grad, b.transpose(1, 2).contiguous()) if ctx.needs_input_grad[0] else None
        )
        grad_b = (
            torch.bmm(a.transpose(1, 2).contiguous(), grad) if ctx.needs_input_grad[1] else None
        )
        return grad_a, grad_b


class _NeighbourSum(torch.autograd.Function):
    """``out[p, c, k, i, b] = sum_j w[p, c, i, j, b] cols[c, k, j, b]``, batch innermost.

    A loop over the few neighbours ``j`` (and, backwards, over ``k`` and ``i``) of
    multiply-adds that are contiguous along the batch: for small ``n`` several times
    faster than batched products of ``n x n`` matrices.
    """

    @staticmethod
    def forward(ctx, w: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(w, cols)
        out = w[:, :, None, :, 0] * cols[None, :, :, None, 0]
        for j in range(1, w.shape[3]):
            out.addcmul_(w[:, :, None, :, j], cols[None, :, :, None, j])
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        w, cols = ctx.saved_tensors
        grad_w = grad_cols = None
        if ctx.needs_input_grad[0]:
            grad_w = grad[:, :, 0, :, None] * cols[None, :, 0, None]
            for k in range(1, cols.shape[1]):
                grad_w.addcmul_(grad[:, :, k, :, None], cols[None, :, k, None])
        if ctx.needs_input_grad[1]:
            grad_cols = torch.zeros_like(cols)
            for p in range(w.shape[0]):
                for i in range(w.shape[2]):
                    grad_cols.addcmul_(grad[p, :, :, i, None], w[p, :, None, i])
        return grad_w, grad_cols


_CACHE: dict[tuple, nn.Module] = {}


def _cached(key: tuple, build) -> nn.Module:
    """A copy of a parameter-free module built once per key: e3nn's code generation
    (tensor products) and its sampling of activation moments (gates) take about 0.2 to
    0.4 s per module, copies almost nothing."""
    if key not in _CACHE:
        _CACHE[key] = build()
    return copy.deepcopy(_CACHE[key])


def _tensor_product(irreps: o3.Irreps) -> o3.TensorProduct:
    """``irreps x (0e + 1o) -> irreps``, one ``"uvu"`` path per allowed product, weights
    given per call (per edge)."""
    instructions = [
        (i1, i2, i_out, "uvu", True)
        for i1, (_, ir1) in enumerate(irreps)
        for i2, (_, ir2) in enumerate(_SH)
        for i_out, (_, ir_out) in enumerate(irreps)
        if ir_out in ir1 * ir2
    ]
    return _cached(
        ("tp", str(irreps), torch.get_default_dtype()),
        lambda: o3.TensorProduct(
            irreps, _SH, irreps, instructions, shared_weights=False, internal_weights=False
        ),
    )


def _gate(scalars: o3.Irreps, gated: o3.Irreps) -> Gate:
    """``Gate(scalars: silu, gates: sigmoid, gated)``."""
    gates = o3.Irreps(f"{gated.num_irreps}x0e")
    return _cached(
        ("gate", str(scalars), str(gated), torch.get_default_dtype()),
        lambda: Gate(scalars, [nn.functional.silu], gates, [torch.sigmoid], gated),
    )


class DenseConvolution(nn.Module):
    """``m_i = sum_{j != i} TP(h_j, Y(x_j - x_i); phi_ij @ weight)`` on a dense graph.

    ``TP`` is ``o3.TensorProduct(irreps, 0e + 1o, irreps)`` with one ``"uvu"`` path for
    each input irrep and harmonic whose product contains an output irrep, external
    per-edge weights and e3nn's default (component) normalisation.

    Parameters
    ----------
    irreps
        Irreps of the node features and of the messages, one multiplicity (the
        channels) for all.
    n_features
        Number ``K`` of radial features ``phi``.
    kernel
        ``"batch_last"``, ``"factorised"`` (both for ``C x 0e + C x 1o`` only),
        ``"dense"`` or ``"e3nn"``; see the module docstring. All give the same numbers.
    """

    def __init__(self, irreps, n_features: int, kernel: str = "dense") -> None:
        super().__init__()
        self.irreps, self.kernel = o3.Irreps(irreps), kernel
        muls = {mul for mul, _ in self.irreps}
        if len(muls) != 1:
            raise ConfigError(
                f"DenseConvolution needs one multiplicity for all irreps, got {irreps}"
            )
        self._mul = muls.pop()
        self._dims = [ir.dim for _, ir in self.irreps]  # plain ints, so that forward compiles
        self.tp = _tensor_product(self.irreps)
        self.sh = o3.SphericalHarmonics(_SH, normalize=False, normalization="component")
        # last layer of the radial MLP, in e3nn's weight order: w_ij = phi_ij @ weight
        self.weight = nn.Parameter(torch.randn(n_features, self.tp.weight_numel) / n_features**0.5)
        self._plan()
        vector_only = self._paths == _VECTOR_PATHS
        if kernel not in KERNELS[1:] or (
            kernel in ("batch_last", "factorised") and not vector_only
        ):
            raise ConfigError(
                f"kernel must be one of {KERNELS[1:]} ('batch_last' and 'factorised' need "
                f"lmax = 1); got {kernel!r} for irreps {self.irreps}"
            )

    def _plan(self) -> None:
        """Constant tensors that turn the tensor product into matrix products.

        Per channel, a node's features are a vector ``h`` of ``D = sum_l (2l + 1)``
        numbers. The neighbour sum acts on the columns ``cols_j = h_j @ (H0 + x_j . Hq)``:
        ``h_j`` itself and, for each path with a degree-1 harmonic, ``TP_p(h_j, x_j)``.
        After the sum (``sums_i[p]``, one row of columns per path) the messages are
        ``m_i = sums_i @ (A - x_i . Mq)``: the coupling of each path, minus
        ``TP_p(sum_j w_ij h_j, x_i)`` for the degree-1 paths.
        """
        starts = [sum(self._dims[:i]) for i in range(len(self._dims))]
        d, n_paths = sum(self._dims), len(self.tp.instructions)
        n_cols = d + sum(
            self.irreps[ins.i_out].ir.dim
            for ins in self.tp.instructions
            if _SH[ins.i_in2].ir.l == 1
        )
        h0, hq = (
            torch.zeros(d, n_cols, dtype=torch.float64),
            torch.zeros(3, d, n_cols, dtype=torch.float64),
        )
        a = torch.zeros(n_paths, n_cols, d, dtype=torch.float64)
        mq = torch.zeros(3, n_paths, n_cols, d, dtype=torch.float64)
        h0[:, :d] = torch.eye(d)
        col, scale, self._paths = d, [], []
        for p, ins in enumerate(self.tp.instructions):
            ir1 = self.irreps[ins.i_in1].ir
            ir2, ir_out = _SH[ins.i_in2].ir, self.irreps[ins.i_out].ir
            self._paths.append((ir1.l, ir2.l, ir_out.l))
            w3j = o3.wigner_3j(ir1.l, ir2.l, ir_out.l, dtype=torch.float64)
            coupling = ins.path_weight * w3j  # (d1, d2, d3)
            coupling = coupling * math.sqrt(3) ** ir2.l  # Y^1(r) = sqrt(3) r
            scale.append(float(coupling.flatten()[0]))  # at lmax 1, coupling = scale * identity
            rows = slice(starts[ins.i_in1], starts[ins.i_in1] + ir1.dim)
            out = slice(starts[ins.i_out], starts[ins.i_out] + ir_out.dim)
            if ir2.l == 0:  # Y^0 = 1
                a[p, rows, out] = coupling[:, 0, :]
                continue
            far_cols = slice(col, col + ir_out.dim)
            hq[:, rows, far_cols] = coupling.permute(1, 0, 2)  # TP_p(h_j, x_j)
            a[p, far_cols, out] = torch.eye(ir_out.dim)
            mq[:, p, rows, out] = coupling.permute(1, 0, 2)  # TP_p(., x_i)
            col += ir_out.dim
        dtype = torch.get_default_dtype()  # build under float64 for exact float64 couplings
        self.register_buffer("_h0", h0.flatten().to(dtype), persistent=False)
        self.register_buffer("_hq", hq.reshape(3, -1).to(dtype), persistent=False)
        self.register_buffer("_a", a.flatten().to(dtype), persistent=False)
        self.register_buffer("_mq", mq.reshape(3, -1).to(dtype), persistent=False)
        path_scale = torch.tensor(scale, dtype=dtype).repeat_interleave(self._mul)
        self.register_buffer("_path_scale", path_scale, persistent=False)
        self._n_cols, self._d = n_cols, d

    def forward(self, h: torch.Tensor, pos: torch.Tensor, phi: torch.Tensor) -> torch.Tensor:
        """Messages for every particle.

        Parameters
        ----------
        h
            Node features, ``(B, n, irreps.dim)``.
        pos
            Positions, ``(B, n, 3)`` (any origin; the CoM frame is the most accurate).
        phi
            Radial features ``phi[k, i, j, b] = phi_k(d_ij)``, ``(K, n, n, B)`` (batch
            last), zero where ``i == j``.

        Returns
        -------
        torch.Tensor
            ``sum_j TP(h_j, Y(x_j - x_i), phi_ij @ weight)``, ``(B, n, irreps.dim)``.
        """
        if self.kernel == "batch_last":
            return self._batch_last(h, pos, phi)
        if self.kernel == "factorised":
            return self._factorised(h, pos, phi)
        if self.kernel == "dense":
            return self._dense(h, pos, phi)
        return self._reference(h, pos, phi)

    def _batch_last(self, h, pos, phi):
        """lmax 1, batch innermost: ``w`` is (path, C, n, n, B), features (C, ., n, B)."""
        b, n, _ = h.shape
        c, k = self._mul, phi.shape[0]
        x = pos.permute(2, 1, 0).contiguous()  # (3, n, B)
        ht = h.permute(2, 1, 0).contiguous()  # (4 C, n, B)
        s, v = ht[:c, None], ht[c:].reshape(c, 3, n, b)
        cols_s = torch.cat([s, s * x], dim=1)  # (C, 4, n, B): s, s x
        cols_v = torch.cat([v, (v * x).sum(dim=1, keepdim=True)], dim=1)  # v, v . x
        u = (self.weight * self._path_scale).T  # couplings folded into the weights
        w = (u @ phi.reshape(k, -1)).reshape(4, c, n, n, b)
        sum_s = _NeighbourSum.apply(w[:2], cols_s)  # (2, C, 4, n, B): paths ss, sv
        sum_v = _NeighbourSum.apply(w[2:], cols_v)  # paths vs, vv
        m_s = sum_s[0, :, 0] + sum_v[1, :, 3] - (sum_v[1, :, :3] * x).sum(dim=1)
        m_v = sum_v[0, :, :3] + sum_s[1, :, 1:] - sum_s[1, :, :1] * x
        return torch.cat([m_s, m_v.reshape(3 * c, n, b)]).permute(2, 1, 0).contiguous()

    def _factorised(self, h, pos, phi):
        """lmax 1: ``U . (Phi @ cols)``, with no per-edge weights."""
        b, n, _ = h.shape
        c, k = self._mul, phi.shape[0]
        x = pos[:, :, None]  # (B, n, 1, 3)
        s, v = h[..., :c, None], h[..., c:].reshape(b, n, c, 3)
        cols = torch.stack(
            [
                torch.cat([s, s * x], dim=-1),
                torch.cat([v, (v * x).sum(dim=-1, keepdim=True)], dim=-1),
            ],
            dim=3,
        )
        phi = phi.permute(3, 0, 1, 2).reshape(b, k * n, n)
        agg = torch.bmm(phi, cols.reshape(b, n, 8 * c))  # (B, K n, 8 C)
        agg = agg.reshape(b, k, n, c, 2, 4).permute(3, 4, 0, 2, 5, 1).reshape(2 * c, 4 * b * n, k)
        u = (self.weight * self._path_scale).reshape(k, 2, 2, c).permute(3, 1, 0, 2)
        sums = torch.bmm(agg, u.reshape(2 * c, k, 2)).reshape(c, 2, b, n, 4, 2)
        sums = sums.permute(2, 3, 0, 1, 5, 4)  # (B, n, C, group, path, col)
        ss, sv, vs, vv = (
            sums[..., 0, 0, :],
            sums[..., 0, 1, :],
            sums[..., 1, 0, :],
            sums[..., 1, 1, :],
        )
        m_s = ss[..., 0] + vv[..., 3] - (vv[..., :3] * x).sum(dim=-1)
        m_v = vs[..., :3] + sv[..., 1:] - sv[..., :1] * x
        return torch.cat([m_s, m_v.reshape(b, n, 3 * c)], dim=-1)

    def _dense(self, h, pos, phi):
        """Any lmax: per-edge weights ``(B, C * paths, n, n)`` and the tensors of :meth:`_plan`."""
        b, n, _ = h.shape
        c, d, n_cols, k = self._mul, self._d, self._n_cols, phi.shape[0]
        n_paths = len(self._paths)
        per_channel = torch.cat(
            [
                blk.reshape(b * n, c, dim)
                for blk, dim in zip(
                    h.split([c * dim for dim in self._dims], dim=-1), self._dims, strict=True
                )
            ],
            dim=-1,
        )  # (Bn, C, D)
        x = pos.reshape(b * n, 3)
        cols = _SmallBmm.apply(per_channel, (self._h0 + x @ self._hq).reshape(b * n, d, n_cols))
        u = self.weight.reshape(k, n_paths, c).transpose(1, 2).reshape(k, c * n_paths)
        w = (u.T @ phi.reshape(k, n * n * b)).reshape(c * n_paths, n * n, b).permute(2, 0, 1)
        sums = _SmallBmm.apply(
            w.reshape(b * c, n_paths * n, n),
            cols.reshape(b, n, c, n_cols).transpose(1, 2).reshape(b * c, n, n_cols),
        )
        sums = sums.reshape(b, c, n_paths, n, n_cols).permute(0, 3, 1, 2, 4)
        out = _SmallBmm.apply(
            sums.reshape(b * n, c, n_paths * n_cols),
            (self._a - x @ self._mq).reshape(b * n, n_paths * n_cols, d),
        )
        return torch.cat(
            [
                blk.reshape(b, n, c * dim)
                for blk, dim in zip(out.split(self._dims, dim=-1), self._dims, strict=True)
            ],
            dim=-1,
        )

    def _reference(self, h, pos, phi):
        """e3nn's tensor product on every ordered pair: the definition, evaluated directly."""
        b, n, d = h.shape
        sh = self.sh(pos[:, None, :, :] - pos[:, :, None, :])  # [b, i, j] -> Y(x_j - x_i)
        weight = phi.permute(3, 1, 2, 0) @ self.weight
        return self.tp(h[:, None].expand(b, n, n, d), sh, weight).sum(dim=2)


class _Layer(nn.Module):
    """One interaction: convolution, then ``h + Gate(Linear([h, m]))``."""

    def __init__(self, irreps: o3.Irreps, n_features: int, kernel: str) -> None:
        super().__init__()
        scalars = o3.Irreps([(mul, ir) for mul, ir in irreps if ir.l == 0])
        gated = o3.Irreps([(mul, ir) for mul, ir in irreps if ir.l > 0])
        self.conv = DenseConvolution(irreps, n_features, kernel=kernel)
        self.gate = _gate(scalars, gated)
        # [h, m] interleaved per irrep, so that the linear map has one block per irrep
        self.mix = o3.Linear(o3.Irreps([(2 * mul, ir) for mul, ir in irreps]), self.gate.irreps_in)
        self._sizes = [mul * ir.dim for mul, ir in irreps]

    def forward(self, h, pos, phi, norm: float):
        m = self.conv(h, pos, phi) * norm
        pairs = zip(h.split(self._sizes, dim=-1), m.split(self._sizes, dim=-1), strict=True)
        return h + self.gate(self.mix(torch.cat([t for pair in pairs for t in pair], dim=-1)))


class E3NNControl(nn.Module):
    """Equivariant control ``u(t, x)`` of shape ``(B, n_particles * spatial_dim)``.

    Exactly zero at initialisation; equivariant under O(3) and permutations of the
    particles, invariant under translations; the output is centre-of-mass free.

    Parameters
    ----------
    n_particles, spatial_dim
        The particle system (``spatial_dim`` 2 or 3); ``x`` has
        ``n_particles * spatial_dim`` coordinates, ordered (x1, y1[, z1], x2, ...).
    channels
        Multiplicity of every irrep ``0e, 1o, ...`` of the hidden features.
    lmax
        Highest degree of the hidden features (the edges always use degrees 0 and 1).
    n_layers
        Number of interaction layers.
    n_radial
        Number of Gaussians of the radial basis, centred on ``[0, r_max]`` (or
        ``[0, r_cut]``).
    r_max
        Range of the radial basis in length units; the basis vanishes smoothly beyond
        it. Choose it near the largest pair distance of the system.
    r_cut
        If given, pairs further apart than ``r_cut`` do not interact (a smooth
        envelope); ``None`` keeps the graph fully connected.
    radial_hidden
        Width of the hidden layer of the radial MLP; the cost of the convolution grows
        with ``radial_hidden + 1``.
    n_frequencies
        Fourier frequencies of the time embedding.
    score_input
        If True, call as ``net(t, x, score=s)``; the score (``-grad energy``) enters
        every particle as an extra ``1o`` feature.
    kernel
        How the convolution is evaluated (same numbers, different speed): ``"auto"``
        (``"batch_last"`` below 24 particles, ``"factorised"`` from 24, ``"dense"`` for
        ``lmax >= 2``), or one of these, or ``"e3nn"`` (reference). See the module
        docstring.
    compile
        Wrap the computation in ``torch.compile`` on the first call (needs a working
        inductor backend: a C++ compiler on CPU, triton on CUDA). The first call, and
        the first with another batch size, then take minutes on a small CPU; measured
        gain on the CPU: 1.7x for DW-4, none for LJ-13 (``benchmarks/nets.md``).

    Examples
    --------
    >>> net = E3NNControl(n_particles=4, spatial_dim=2, channels=8)
    >>> net(torch.rand(5), torch.randn(5, 8)).abs().max().item()
    0.0
    """

    def __init__(
        self,
        n_particles: int,
        spatial_dim: int,
        channels: int = 16,
        lmax: int = 1,
        n_layers: int = 3,
        n_radial: int = 8,
        r_max: float = 5.0,
        r_cut: float | None = None,
        radial_hidden: int = 8,
        n_frequencies: int = 16,
        score_input: bool = False,
        kernel: str = "auto",
        compile: bool = False,
    ) -> None:
        super().__init__()
        _check_sizes(
            n_particles,
            spatial_dim,
            channels,
            lmax,
            n_layers,
            n_radial,
            r_max,
            r_cut,
            radial_hidden,
            n_frequencies,
        )
        self.n_particles, self.spatial_dim = int(n_particles), int(spatial_dim)
        self.dim = self.n_particles * self.spatial_dim
        self.n_radial, self.r_max, self.r_cut = n_radial, float(r_max), r_cut
        self.score_input, self.compile = score_input, compile
        self.irreps_hidden = natural_irreps(channels, lmax)
        self.time_embed = nn.Sequential(
            FourierEmbedding(n_frequencies),
            nn.Linear(2 * n_frequencies, channels),
            nn.SiLU(),
            nn.Linear(channels, channels),
        )
        n_vectors = 2 if score_input else 1
        self.embed = o3.Linear(f"{channels + 1}x0e + {n_vectors}x1o", self.irreps_hidden)
        self.radial = nn.Linear(n_radial, radial_hidden)  # then SiLU; the last layer is per layer
        self.kernel = _choose_kernel(kernel, self.n_particles, lmax)
        self.layers = nn.ModuleList(
            _Layer(self.irreps_hidden, radial_hidden + 1, self.kernel) for _ in range(n_layers)
        )
        self.readout = o3.Linear(self.irreps_hidden, "1x1o")
        with torch.no_grad():
            self.readout.weight.zero_()
        eye = torch.eye(self.n_particles, dtype=torch.get_default_dtype())[:, :, None]
        self.register_buffer("_eye", eye, persistent=False)
        self._compiled = None

    def forward(
        self, t: torch.Tensor | float, x: torch.Tensor, score: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Evaluate the control.

        Parameters
        ----------
        t
            Times, shape ``(B,)``, or a scalar shared by the batch.
        x
            Positions, shape ``(B, n_particles * spatial_dim)``.
        score
            Target score ``-grad energy(x)``, shape of ``x``; required exactly when the
            network was built with ``score_input=True``.

        Returns
        -------
        torch.Tensor
            Control, shape ``(B, n_particles * spatial_dim)``, CoM-free, dtype and device
            of ``x``.
        """
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ShapeError(
                f"E3NNControl expects x of shape (B, {self.dim}) for {self.n_particles} "
                f"particles in {self.spatial_dim}-D, got {tuple(x.shape)}"
            )
        _check_score(self.score_input, score, x, "E3NNControl")
        t = FourierMLP._broadcast_time(t, x)
        if self.compile:
            if self._compiled is None:
                self._compiled = torch.compile(self._control)
            return self._compiled(t, x, score)
        return self._control(t, x, score)

    def _control(self, t, x, score):
        pos = _to_3d(x, self.n_particles, self.spatial_dim)
        pos = pos - pos.mean(dim=1, keepdim=True)
        vectors = (
            [pos] if score is None else [pos, _to_3d(score, self.n_particles, self.spatial_dim)]
        )
        time = self.time_embed(t)[:, None, :].expand(-1, self.n_particles, -1)
        h = self.embed(torch.cat([time, pos.norm(dim=-1, keepdim=True), *vectors], dim=-1))
        phi = self._radial_features(pos)
        norm = (self.n_particles - 1) ** -0.5
        for layer in self.layers:
            h = layer(h, pos, phi, norm)
        out = self.readout(h)  # (B, n, 3)
        out = out - out.mean(dim=1, keepdim=True)
        return out[..., : self.spatial_dim].reshape(x.shape[0], self.dim)

    def _radial_features(self, pos):
        """Radial features ``phi[k, i, j, b] = phi_k(|x_i - x_j|)``, zero where ``i == j``.

        Shape ``(radial_hidden + 1, n, n, B)``, batch last; computed on all ordered pairs
        with one matrix product (no gathers).
        """
        b, n, _ = pos.shape
        p = pos.permute(2, 1, 0)  # (3, n, B)
        # 1 on the diagonal, where the distance is masked, keeps the square root smooth
        dist = ((p[:, :, None] - p[:, None]).square().sum(dim=0) + self._eye).sqrt()
        end = self.r_max if self.r_cut is None else self.r_cut
        basis = soft_one_hot_linspace(dist, 0.0, end, self.n_radial, basis="gaussian", cutoff=False)
        basis = basis.reshape(-1, self.n_radial) * self.n_radial**0.5
        hidden = self.radial.weight @ basis.T + self.radial.bias[:, None]  # (radial_hidden, n n B)
        phi = torch.cat([nn.functional.silu(hidden), torch.ones_like(hidden[:1])])
        mask = 1 - self._eye
        if self.r_cut is not None:
            mask = mask * soft_unit_step(10 * (1 - dist / self.r_cut))
        return phi.reshape(-1, n, n, b) * mask

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_compiled"] = None  # compiled functions do not pickle
        return state

    def extra_repr(self) -> str:
        return (
            f"n_particles={self.n_particles}, spatial_dim={self.spatial_dim}, "
            f"irreps={self.irreps_hidden}, kernel={self.kernel!r}, "
            f"score_input={self.score_input}"
        )


def _choose_kernel(kernel: str, n_particles: int, lmax: int) -> str:
    if kernel not in KERNELS:
        raise ConfigError(f"kernel must be one of {KERNELS}, got {kernel!r}")
    if kernel != "auto":
        return kernel
    if lmax > 1:
        return "dense"
    return "batch_last" if n_particles < FACTORISE_FROM else "factorised"


def _check_sizes(
    n_particles,
    spatial_dim,
    channels,
    lmax,
    n_layers,
    n_radial,
    r_max,
    r_cut,
    radial_hidden,
    n_frequencies,
) -> None:
    if int(n_particles) < 2 or int(spatial_dim) not in (2, 3):
        raise ConfigError(
            f"E3NNControl needs n_particles >= 2 and spatial_dim in (2, 3), got "
            f"{n_particles}, {spatial_dim}"
        )
    if min(channels, n_layers, n_radial, radial_hidden, n_frequencies) < 1 or lmax < 1:
        raise ConfigError(
            f"E3NNControl needs positive sizes and lmax >= 1, got channels={channels}, "
            f"lmax={lmax}, n_layers={n_layers}, n_radial={n_radial}, "
            f"radial_hidden={radial_hidden}, n_frequencies={n_frequencies}"
        )
    if r_max <= 0 or (r_cut is not None and r_cut <= 0):
        raise ConfigError(f"r_max and r_cut must be positive, got r_max={r_max}, r_cut={r_cut}")


def _to_3d(x: torch.Tensor, n_particles: int, spatial_dim: int) -> torch.Tensor:
    """Flat ``(B, n * d)`` to ``(B, n, 3)``, embedding 2-D coordinates at z = 0."""
    p = x.reshape(x.shape[0], n_particles, spatial_dim)
    if spatial_dim == 2:
        p = torch.cat([p, p.new_zeros(p.shape[0], n_particles, 1)], dim=-1)
    return p
