"""Roll out the generative process and compute exact path log-weights.

A :class:`GenerativeProcess` is a reference (prior, noising transitions B_k), a time
grid and an integrator (generative transitions F_k). With a control ``u(t, x)`` it
defines the discrete-time sampler

    x_0 ~ rho_0 = p_0^ref,    x_{k+1} ~ F_k(. | x_k) = N(A_k x_k + C_k u(t_k, x_k), V_k I),

and the path log-weight

    log w = log pi~(x_N) + sum_k log B_k(x_k | x_{k+1})
            - log rho_0(x_0) - sum_k log F_k(x_{k+1} | x_k),

the log-ratio of the target path measure pi~(x_N) prod_k B_k to the sampler's. Since
each B_k is a normalised density in x_k, E[w] = Z = int pi~ for ANY control and ANY
grid: the weights are exact importance weights of the discretised process.

For a delta prior (PIS) x_0 = 0, and B_0(x_0 | x_1) is the same delta: both log
densities are undefined and cancel exactly, so both are left out of the sum.

The control output is projected onto the sampler's space (CoM-free for particle
systems), so states never leave it. Everything runs in the dtype and device of the
states; per-step coefficients are cast once before the step loop, which makes no
host-device synchronisation.

Examples
--------
>>> from physsample.diffusion import GaussianReference, GaussianSpace, LinearVPSchedule
>>> from physsample.diffusion import uniform_grid
>>> ref = GaussianReference(LinearVPSchedule(), GaussianSpace(2))
>>> process = GenerativeProcess(ref, uniform_grid(10))
>>> target = lambda x: -0.5 * (x**2).sum(dim=1)       # Z = 2 pi
>>> zero = lambda t, x: torch.zeros_like(x)
>>> out = simulate(process, zero, target, 4, generator=torch.Generator().manual_seed(0),
...                dtype=torch.float64)
>>> out.states.shape, out.log_weights.shape
(torch.Size([4, 11, 2]), torch.Size([4]))
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
from torch import nn

from physsample.diffusion.gaussian import GaussianSpace
from physsample.diffusion.integrators import (
    IntegratorFn,
    generative_coefficients,
    noising_coefficients,
)
from physsample.diffusion.references import Reference
from physsample.diffusion.time_grids import check_grid, uniform_grid
from physsample.errors import ConfigError, ShapeError

__all__ = [
    "GenerativeProcess",
    "StepCoefficients",
    "Rollout",
    "simulate",
    "log_weights_from_states",
    "residual_control",
    "random_steps",
]

ControlFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
LogProbFn = Callable[[torch.Tensor], torch.Tensor]


class StepCoefficients(NamedTuple):
    """Grid and per-step factors in one dtype and device.

    ``times`` is (N + 1,); the others are (N,): F_k = N(state_factor x + control_factor u,
    variance) and B_k = N(noise_mean_factor x_{k+1}, noise_variance).
    """

    times: torch.Tensor
    state_factor: torch.Tensor
    control_factor: torch.Tensor
    variance: torch.Tensor
    noise_mean_factor: torch.Tensor
    noise_variance: torch.Tensor


class Rollout(NamedTuple):
    """Output of :func:`simulate`.

    Attributes
    ----------
    states : torch.Tensor or None
        (B, N + 1, dim), x_0 (prior) to x_N (sample); None if not kept.
    log_weights : torch.Tensor
        (B,), path log-weights (with the graph when simulated under grad).
    samples : torch.Tensor
        (B, dim), the final states x_N.
    """

    states: torch.Tensor | None
    log_weights: torch.Tensor
    samples: torch.Tensor


class GenerativeProcess:
    """A reference, a time grid and an integrator: the discretised sampler without control.

    Parameters
    ----------
    reference
        Prior, noising transitions and reference score.
    grid
        Generative times (N + 1,) from 0 to ``reference.schedule.horizon``, or a number
        of steps N for the uniform grid.
    integrator
        ``"exponential"`` (default) or ``"euler_maruyama"`` (aliases ``"ei"``, ``"em"``),
        or a function ``(schedule, grid) -> GenerativeCoefficients``.
    """

    def __init__(
        self,
        reference: Reference,
        grid: torch.Tensor | int,
        integrator: str | IntegratorFn = "exponential",
    ) -> None:
        schedule = reference.schedule
        if isinstance(grid, int):
            grid = uniform_grid(grid, schedule.horizon)
        grid = check_grid(grid, schedule.horizon).detach().to("cpu", torch.float64)
        self.reference, self.grid, self.integrator = reference, grid, integrator
        gen = generative_coefficients(integrator, schedule, grid)
        noise = noising_coefficients(schedule, grid)
        self._coefficients = StepCoefficients(grid, *gen, *noise)
        self._cache: dict[tuple[torch.dtype, torch.device], StepCoefficients] = {}

    @property
    def n_steps(self) -> int:
        return self.grid.shape[0] - 1

    @property
    def space(self) -> GaussianSpace:
        return self.reference.space

    @property
    def skip_first_noising(self) -> bool:
        """True for a delta prior: log rho_0 and log B_0 are left out (they cancel)."""
        return self.reference.prior_is_delta

    def coefficients(self, dtype: torch.dtype, device: torch.device | str) -> StepCoefficients:
        """The grid and per-step factors in ``dtype`` on ``device`` (cached)."""
        key = (dtype, torch.device(device))
        if key not in self._cache:
            self._cache[key] = StepCoefficients(
                *(c.to(device=device, dtype=dtype) for c in self._coefficients)
            )
        return self._cache[key]

    def mean(
        self, c: StepCoefficients, k: int, x: torch.Tensor, control_fn: ControlFn
    ) -> torch.Tensor:
        """Mean of F_k(. | x) for x (B, dim): A_k x + C_k P u(t_k, x)."""
        u = control_fn(c.times[k].expand(x.shape[0]), x)
        return c.state_factor[k] * x + c.control_factor[k] * self.space.project(u)

    def log_forward(
        self,
        c: StepCoefficients,
        k: int,
        x: torch.Tensor,
        x_next: torch.Tensor,
        control_fn: ControlFn,
    ) -> torch.Tensor:
        """log F_k(x_next | x), shape (B,)."""
        return self.space.log_normal(x_next, self.mean(c, k, x, control_fn), c.variance[k])

    def log_backward(
        self, c: StepCoefficients, k: int, x: torch.Tensor, x_next: torch.Tensor
    ) -> torch.Tensor:
        """log B_k(x | x_next), shape (B,); zeros for k = 0 with a delta prior."""
        if k == 0 and self.skip_first_noising:
            return x.new_zeros(x.shape[0])
        mean = c.noise_mean_factor[k] * x_next
        return self.space.log_normal(x, mean, c.noise_variance[k])

    def log_prior(self, x0: torch.Tensor) -> torch.Tensor:
        """log rho_0(x_0), shape (B,); zeros for a delta prior."""
        if self.skip_first_noising:
            return x0.new_zeros(x0.shape[0])
        return self.reference.prior_log_prob(x0)

    def __repr__(self) -> str:
        return (
            f"GenerativeProcess(reference={type(self.reference).__name__}, "
            f"n_steps={self.n_steps}, integrator={self.integrator!r})"
        )


def simulate(
    process: GenerativeProcess,
    control_fn: ControlFn,
    target_log_prob: LogProbFn,
    n: int,
    *,
    generator: torch.Generator | None = None,
    noise_scale: float = 1.0,
    keep_states: bool = True,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
    x0: torch.Tensor | None = None,
) -> Rollout:
    """Roll out the generative process and accumulate the path log-weights.

    Parameters
    ----------
    process
        The discretised sampler.
    control_fn
        ``u(t, x)``: t (B,), x (B, dim) -> (B, dim), in score units (see
        :mod:`physsample.diffusion.schedules`).
    target_log_prob
        log pi~(x), x (B, dim) -> (B,), unnormalised (e.g. ``system.log_prob``).
    n
        Number of trajectories.
    generator
        Source of all randomness (prior and noise).
    noise_scale
        Exploration: the noise of each step is drawn with standard deviation
        ``noise_scale * sqrt(V_k)``, but log F_k stays the density of the sampler
        (``noise_scale = 1``). The returned log-weights are then the log-variance
        loss's off-policy weights, not importance weights; they are exact importance
        weights only for ``noise_scale = 1``.
    keep_states
        Return the whole path (B, N + 1, dim); else only the samples.
    dtype, device
        Of the states; default ``torch.get_default_dtype()`` and the generator's
        device (else the reference's).
    x0
        Initial states (n, dim) to use instead of fresh prior draws (their dtype and
        device win). The weights are importance weights only if x0 ~ p_0^ref.

    Returns
    -------
    Rollout
        ``states``, ``log_weights`` (B,) and ``samples`` (B, dim). Under
        ``torch.no_grad()`` nothing keeps a graph; under grad the log-weights are
        differentiable through the solver (reparameterised, for the reverse KL).
    """
    if x0 is not None:
        n, dtype, device = x0.shape[0], x0.dtype, x0.device
    dtype = dtype or torch.get_default_dtype()
    device = device or (generator.device if generator is not None else process.reference.device)
    c = process.coefficients(dtype, device)
    x = process.reference.sample_prior(n, generator, dtype, device) if x0 is None else x0
    log_w = -process.log_prior(x)
    states = [x] if keep_states else None
    for k in range(process.n_steps):
        mean = process.mean(c, k, x, control_fn)
        noise = process.space.noise(n, generator, dtype, device)
        x_next = mean + (noise_scale * torch.sqrt(c.variance[k])) * noise
        log_f = process.space.log_normal(x_next, mean, c.variance[k])
        log_w = log_w + process.log_backward(c, k, x, x_next) - log_f
        x = x_next
        if keep_states:
            states.append(x)
    log_w = log_w + target_log_prob(x)
    return Rollout(torch.stack(states, dim=1) if keep_states else None, log_w, x)


def _check_states(process: GenerativeProcess, states: torch.Tensor) -> None:
    expected = (process.n_steps + 1, process.space.dim)
    if states.ndim != 3 or tuple(states.shape[1:]) != expected:
        raise ShapeError(
            f"states must have shape (B, {expected[0]}, {expected[1]}), got {tuple(states.shape)}"
        )


def _log_weights_graph(process, control_fn, target_log_prob, states) -> torch.Tensor:
    """log w from states, every term in one graph."""
    c = process.coefficients(states.dtype, states.device)
    log_w = target_log_prob(states[:, -1]) - process.log_prior(states[:, 0])
    for k in range(process.n_steps):
        x, x_next = states[:, k], states[:, k + 1]
        log_w = log_w + process.log_backward(c, k, x, x_next)
        log_w = log_w - process.log_forward(c, k, x, x_next, control_fn)
    return log_w


def _take(values: torch.Tensor, ks: list[int], dim: int = 0) -> torch.Tensor:
    """values at indices ``ks`` along ``dim``: a view for consecutive steps, else a stack.

    Python indices only, so nothing is copied from the host to the device.
    """
    if ks == list(range(ks[0], ks[0] + len(ks))):
        return values.narrow(dim, ks[0], len(ks))
    return torch.stack([values.select(dim, k) for k in ks], dim=dim)


def _log_forward_block(process, c, ks: list[int], states, control_fn) -> torch.Tensor:
    """log F_k(x_{k+1} | x_k) for the steps ``ks``, shape (len(ks), B), in ONE control call.

    The rows (t_k, x_k) of all the steps are stacked into one batch of len(ks) * B rows,
    step-major, so the network runs once per chunk instead of once per step.
    """
    m, (b, _, dim) = len(ks), states.shape
    x = _take(states, ks, dim=1).transpose(0, 1).reshape(m * b, dim)
    x_next = _take(states, [k + 1 for k in ks], dim=1).transpose(0, 1).reshape(m * b, dim)

    def per_row(values: torch.Tensor) -> torch.Tensor:  # (m,) -> (m * B,), step-major
        return _take(values, ks)[:, None].expand(m, b).reshape(m * b)

    u = process.space.project(control_fn(per_row(c.times), x))
    mean = per_row(c.state_factor)[:, None] * x + per_row(c.control_factor)[:, None] * u
    return process.space.log_normal(x_next, mean, per_row(c.variance)).reshape(m, b)


def _log_weights_chunked(process, control_fn, target_log_prob, states, chunk) -> torch.Tensor:
    """log w from states as :func:`_log_weights_graph`, the control called once per chunk."""
    c = process.coefficients(states.dtype, states.device)
    log_w = target_log_prob(states[:, -1]) - process.log_prior(states[:, 0])
    for k in range(process.n_steps):
        log_w = log_w + process.log_backward(c, k, states[:, k], states[:, k + 1])
    for start in range(0, process.n_steps, chunk):
        ks = list(range(start, min(start + chunk, process.n_steps)))
        log_w = log_w - _log_forward_block(process, c, ks, states, control_fn).sum(dim=0)
    return log_w


def _default_params(process: GenerativeProcess, control_fn: ControlFn) -> list[torch.Tensor]:
    params = list(process.reference.parameters())
    if isinstance(control_fn, nn.Module):
        params += list(control_fn.parameters())
    return params


def log_weights_from_states(
    process: GenerativeProcess,
    control_fn: ControlFn,
    target_log_prob: LogProbFn,
    states: torch.Tensor,
    *,
    chunk: int | None = None,
    params: Sequence[torch.Tensor] | None = None,
    log_weights: torch.Tensor | None = None,
    steps: Sequence[int] | None = None,
) -> torch.Tensor:
    """Path log-weights of given states (B, N + 1, dim), differentiable in the control.

    The states are treated as data (detached): they may come from :func:`simulate`
    under ``torch.no_grad()``, with exploration noise or not. The weights use the
    sampler's own F_k, which is what the log-variance loss needs.

    Parameters
    ----------
    process, control_fn, target_log_prob
        As in :func:`simulate`.
    states
        (B, N + 1, dim).
    chunk
        None: one autograd graph over all steps (memory grows with N). An integer:
        the log-weights are computed without a graph and the backward pass recomputes
        the control-dependent terms (log rho_0 and log F_k) ``chunk`` steps at a time,
        so memory stays at that of the states plus one chunk. The gradient is the same.
        Each chunk's steps are stacked into one control call of ``chunk * B`` rows, so
        the control must act row by row (no batch statistics).
    params
        Tensors to differentiate in chunked mode; default: the parameters of
        ``control_fn`` (if an ``nn.Module``) and of the reference. Pass them when the
        control is a closure.
    log_weights
        Chunked mode: the log-weights of these states if already known (from
        :func:`simulate` with the same control), which saves the first pass.
    steps
        Chunked mode: differentiate log F_k only for these step indices, scaled by
        N / len(steps): an unbiased estimate of the gradient from a subset of time
        steps (see :func:`random_steps`). The value is unchanged.

    Returns
    -------
    torch.Tensor
        (B,). In chunked mode its backward accumulates into ``params`` only.
    """
    _check_states(process, states)
    states = states.detach()
    if chunk is None:
        if steps is not None:
            raise ConfigError("log_weights_from_states: steps needs chunked mode (chunk=int)")
        return _log_weights_graph(process, control_fn, target_log_prob, states)
    if int(chunk) < 1:
        raise ConfigError(f"chunk must be a positive number of steps, got {chunk}")
    params = [p for p in (params if params is not None else _default_params(process, control_fn))]
    params = [p for p in params if p.requires_grad]
    if log_weights is None:
        with torch.no_grad():
            log_weights = _log_weights_chunked(
                process, control_fn, target_log_prob, states, int(chunk)
            )
    steps = list(range(process.n_steps)) if steps is None else [int(k) for k in steps]

    def backward(grad: torch.Tensor) -> list[torch.Tensor]:
        return _chunked_gradients(process, control_fn, states, params, grad, int(chunk), steps)

    return _RecomputedLogWeights.apply(log_weights.detach(), backward, *params)


class _RecomputedLogWeights(torch.autograd.Function):
    """Identity on precomputed log-weights whose backward recomputes the graph in chunks."""

    @staticmethod
    def forward(ctx, log_weights, backward, *params):
        ctx.backward = backward
        return log_weights.clone()

    @staticmethod
    def backward(ctx, grad):
        return (None, None, *ctx.backward(grad))


def _accumulate(total: list[torch.Tensor], term: torch.Tensor, params, grad) -> None:
    if not term.requires_grad:
        return
    grads = torch.autograd.grad(term, params, grad_outputs=grad, allow_unused=True)
    for acc, g in zip(total, grads, strict=True):
        if g is not None:
            acc.add_(g)


def _chunked_gradients(
    process, control_fn, states, params, grad, chunk, steps
) -> list[torch.Tensor]:
    """Gradients of sum_i grad_i log w_i wrt params, chunk of steps by chunk of steps.

    Only log rho_0 and log F_k depend on the parameters; each chunk's log F_k come from
    one control call (:func:`_log_forward_block`). Non-finite states (of paths whose
    loss gradient is zero) are zeroed so that they cannot turn the sum into NaN.
    """
    total = [torch.zeros_like(p) for p in params]
    if not params:
        return total
    states = torch.where(torch.isfinite(states), states, torch.zeros_like(states))
    c = process.coefficients(states.dtype, states.device)
    scale = process.n_steps / max(len(steps), 1)
    with torch.enable_grad():
        _accumulate(total, -process.log_prior(states[:, 0]), params, grad)
        for start in range(0, len(steps), chunk):
            ks = steps[start : start + chunk]
            term = -_log_forward_block(process, c, ks, states, control_fn).sum(dim=0)
            _accumulate(total, term, params, grad * scale)
    return total


def residual_control(reference: Reference, net: ControlFn) -> ControlFn:
    """The control ``u(t, x) = reference.base_control(t, x) + net(t, x)``.

    A zero network gives the reference's time reversal. For an OU reference, the
    sampler's score estimate is then s_theta = grad log p_t^ref + net (LRDS); with a
    Gaussian reference ``base_control`` is 0 and ``u = net`` (PIS, DDS).
    """

    def control(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return reference.base_control(t, x) + net(t, x)

    return control


def random_steps(
    n_steps: int, n_grad_steps: int, generator: torch.Generator | None = None
) -> list[int]:
    """A uniformly random subset of ``n_grad_steps`` step indices, sorted (drawn on the CPU).

    If ``generator`` is on another device, a CPU generator is seeded from it.
    """
    if not 1 <= int(n_grad_steps) <= int(n_steps):
        raise ConfigError(f"n_grad_steps must be in [1, {n_steps}], got {n_grad_steps}")
    if generator is not None and generator.device.type != "cpu":
        seed = int(torch.randint(2**62, (1,), generator=generator, device=generator.device))
        generator = torch.Generator().manual_seed(seed)
    perm = torch.randperm(int(n_steps), generator=generator)[: int(n_grad_steps)]
    return sorted(perm.tolist())
