"""GMP: a DIS-type sampler with an end-to-end learned Gaussian-mixture prior, and IMR.

Blessing, Jia & Neumann, "End-to-end learning of Gaussian mixture priors for diffusion
samplers", ICLR 2025.

The prior and the reference process
-----------------------------------
The prior is a learnable mixture p_phi(x) = sum_k alpha_k N(mu_k, diag sigma_k^2)
(:class:`MixturePrior`; means, softplus scales and mixture logits are parameters). For
a particle system it is a mixture of CoM-free isotropic Gaussians centred at the origin
with different scales, which keeps the translation, rotation and permutation symmetry;
only the scales and weights are learned.

As in the paper's Proposition 1, the reference (noising) process is the Langevin
diffusion of p_phi, which has p_phi as its stationary law:

    dX = (g(t)^2 / 2) grad log p_phi(X) dt + g(t) dW,    g(t)^2 = sigma^2 beta(t),

with DIS's linear beta schedule (beta_max at the prior end). For p_phi = N(0, sigma^2)
it is exactly DIS's VP-OU reference. The generative process adds the control,

    dX = [(g^2 / 2) grad log p_phi(X) + g^2 u(t, X)] dt + g dW,    u = phi_theta(t, X),

so the untrained sampler (phi_theta = 0) is the stationary reference: it keeps p_phi.

Discretisation and exact weights
--------------------------------
The core's exact-transition machinery (:mod:`physsample.diffusion.path`) supports
noising transitions with a mean linear in the state; the Langevin kernel of a mixture
is not linear, so GMP has its own small path code (:class:`MixtureProcess`). Both the
generative steps F_k and the noising steps B_k are Gaussians with a state-dependent
mean and (diagonal) variance:

- ``integrator="euler_maruyama"`` (the plain discretisation of the SDEs above): mean
  x + (g^2 dt / 2) grad log p_phi(x) (+ g^2 dt u for F), variance g^2 dt;
- ``integrator="exponential"`` (default): every component's OU step solved exactly
  and the results mixed by the responsibilities r_k(x) of the prior: mean
  sum_k r_k [mu_k + a_k (x - mu_k)] (+ sum_k r_k 2 sigma_k^2 (1 - a_k) u for F),
  variance sum_k r_k sigma_k^2 (1 - a_k^2), with a_k = exp(-sigma^2 int beta /
  (2 sigma_k^2)) per coordinate. It is stable for any step and any component scale,
  and for K = 1 it is exactly DIS's exponential step (GMP with one component at
  N(0, sigma^2) reproduces DIS to rounding). This mixing of exact per-component
  steps is our choice, not the paper's; both kernels keep the weights exact.

B_k(x_k | x_{k+1}) is the zero-control kernel of the same step applied to x_{k+1}
(the reference is reversible), and the path log-weight is

    log w = log pi~(x_N) - log p_phi(x_0) + sum_k [log B_k(x_k | x_{k+1}) - log F_k(x_{k+1} | x_k)].

Each B_k is a normalised density in x_k whatever its mean and variance, so E[w] = Z
holds exactly for any prior, horizon, control and number of steps.

The horizon is learned (``learn_horizon=True``): T = horizon * softplus(.) scales every
step's integral of beta, in F and in B alike (the weights stay exact). The network sees
the nominal times of the grid, which do not move.

Gradients
---------
- Log-variance loss (default): trajectories are data (no reparameterisation needed);
  log w is recomputed with the current parameters, and the prior parameters receive
  gradient through -log p_phi(x_0) and through every F_k and B_k (their means and
  variances depend on the means, scales and, via the responsibilities r_k(x), the
  mixture weights); the horizon through every step.
- Reverse KL (``loss="kl"``): the prior draw is reparameterised given the component,
  x_0 = mu_I + sigma_I eps, and the path is differentiated through. The component index
  I ~ Categorical(alpha) cannot be reparameterised, so the mixture weights get, besides
  the pathwise terms above, the score-function term E[-(log w - b) grad log alpha_I]
  with a leave-one-out baseline b; the gradient is then unbiased.

Learning rates: the prior and horizon parameters are stored scaled so that Adam moves a
mean by about ``prior_lr * sigma`` and a scale, weight or the horizon by about
``prior_lr`` (relative) per step, whatever ``lr`` the network uses.

Iterative model refinement (IMR) with ``imr=True``: ``max_components`` slots are
allocated up front (inactive ones are masked out, get zero gradient and keep their
optimizer state at zero), so the optimizer, the EMA and checkpoints never change shape;
every ``imr_every`` steps one slot is switched on, placed by the rule of
:mod:`physsample.methods.imr`.

Example
-------
>>> import physsample as ps                                    # doctest: +SKIP
>>> system = ps.systems.get("gmm40", dim=2)                    # doctest: +SKIP
>>> sampler = ps.methods.GMP(system, sigma=20.0, imr_every=50)  # doctest: +SKIP
>>> out = sampler.fit(steps=1_000).sample(10_000)              # doctest: +SKIP
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from physsample import distributed
from physsample.diffusion import Rollout, cosine_grid, uniform_grid, usable_mask
from physsample.errors import ConfigError
from physsample.methods.base import DiffusionSampler
from physsample.methods.imr import mala_candidates, propose_component

__all__ = ["GMP", "MixturePrior", "LangevinMixtureReference", "MixtureProcess"]

_ONE = math.log(math.e - 1.0)  # softplus(_ONE) = 1
_INTEGRATORS = {"exponential": "exponential", "ei": "exponential"}
_INTEGRATORS.update(euler_maruyama="euler_maruyama", em="euler_maruyama")


class PriorView(NamedTuple):
    """The active prior components in one dtype: slots (K,), means (K, dim) or None
    (CoM-free), variances s2 (K, w) (w = 1 isotropic, else dim), log_alpha (K,)."""

    slots: torch.Tensor
    means: torch.Tensor | None
    s2: torch.Tensor
    log_alpha: torch.Tensor


class KernelTables(NamedTuple):
    """Per-step, per-component kernel factors (N, K, w); ``shift`` (N, K, dim) or None."""

    a: torch.Tensor
    shift: torch.Tensor | None
    var: torch.Tensor
    factor: torch.Tensor


def _inv_softplus(y: torch.Tensor) -> torch.Tensor:
    return y + torch.log(-torch.expm1(-y))


def _log_normal(space, x: torch.Tensor, mean: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
    """log N(x; mean, diag var) on the space; var (B, 1) isotropic or (B, dim) diagonal."""
    if var.shape[-1] == 1:
        return space.log_normal(x, mean, var[:, 0])
    diff = x - mean
    return -0.5 * (diff * diff / var + torch.log(2.0 * math.pi * var)).sum(dim=-1)


class MixturePrior(nn.Module):
    """p_phi(x) = sum_k alpha_k N(mu_k, diag sigma_k^2) over the active of K_max slots.

    Parameters
    ----------
    space
        The sampler's space; CoM-free gives isotropic components centred at 0.
    max_components
        K_max, the slots allocated (fixed parameter shapes).
    n_components
        Active slots at the start: the first at N(0, sigma^2), the others with means
        drawn from N(0, sigma^2) (seeded), all of scale sigma and equal weight.
    sigma
        Initial scale; also the length unit of the stored means.
    gain
        Stored parameters are multiplied by ``gain`` (see the module's learning rates).
    seed
        Seed of the initial means.

    Attributes
    ----------
    active : torch.Tensor
        (K_max,) bool buffer.
    added_at : torch.Tensor
        (K_max,) int buffer: the training step at which a slot was switched on (-1: off).
    """

    def __init__(self, space, max_components, n_components, sigma, gain, seed=0) -> None:
        super().__init__()
        self.space, self.com_free = space, space.com_free
        self.length, self.gain = float(sigma), float(gain)
        k, n = int(max_components), int(n_components)
        means = torch.zeros(k, space.dim, dtype=torch.float64)
        if n > 1 and not self.com_free:
            g = torch.Generator().manual_seed(int(seed))
            means[1:n] = sigma * torch.randn(n - 1, space.dim, generator=g, dtype=torch.float64)
        raw_means = means / (self.length * self.gain)
        if self.com_free:
            self.register_buffer("raw_means", raw_means)
        else:
            self.raw_means = nn.Parameter(raw_means)
        width = 1 if self.com_free else space.dim
        self.raw_scales = nn.Parameter(torch.zeros(k, width, dtype=torch.float64))
        self.raw_logits = nn.Parameter(torch.zeros(k, dtype=torch.float64))
        active = torch.arange(k) < n
        self.register_buffer("active", active)
        self.register_buffer("added_at", torch.where(active, 0, -1))

    # -- parameters in natural units --------------------------------------------------
    @property
    def max_components(self) -> int:
        return self.active.shape[0]

    @property
    def n_active(self) -> int:
        return int(self.active.sum())

    def means(self) -> torch.Tensor:
        """(K_max, dim)."""
        return self.length * self.gain * self.raw_means

    def scales(self) -> torch.Tensor:
        """(K_max, dim), or (K_max, 1) for isotropic components."""
        return self.length * F.softplus(self.gain * self.raw_scales + _ONE)

    def log_weights(self) -> torch.Tensor:
        """log alpha (K_max,), -inf for inactive slots."""
        logits = torch.where(self.active, self.gain * self.raw_logits, -math.inf)
        return torch.log_softmax(logits, dim=0)

    def active_scales(self) -> torch.Tensor:
        return self.scales()[self.active].detach()

    def view(self, dtype: torch.dtype) -> PriorView:
        """The active components in ``dtype`` (differentiable), for repeated evaluations."""
        slots = self.active.nonzero()[:, 0]
        s2 = self.scales()[slots].to(dtype) ** 2
        means = None if self.com_free else self.means()[slots].to(dtype)
        return PriorView(slots, means, s2, self.log_weights()[slots].to(dtype))

    # -- densities --------------------------------------------------------------------
    def component_log_prob(self, x: torch.Tensor, view: PriorView | None = None) -> torch.Tensor:
        """log alpha_k + log N(x; mu_k, diag sigma_k^2) of the active components, (B, K)."""
        v = view or self.view(x.dtype)
        if self.com_free:
            quad = (self.space.project(x) ** 2).sum(dim=-1, keepdim=True) / v.s2[:, 0]
            log_n = -0.5 * (quad + self.space.effective_dim * torch.log(2 * math.pi * v.s2[:, 0]))
        else:
            diff = x[:, None, :] - v.means
            log_n = -0.5 * (diff * diff / v.s2 + torch.log(2 * math.pi * v.s2)).sum(dim=-1)
        return log_n + v.log_alpha

    def log_prob(self, x: torch.Tensor, view: PriorView | None = None) -> torch.Tensor:
        """log p_phi(x), shape (B,)."""
        return torch.logsumexp(self.component_log_prob(x, view), dim=1)

    def responsibilities(self, x: torch.Tensor, view: PriorView | None = None):
        """r_k(x) = alpha_k N_k(x) / p_phi(x) of the active components, (B, K).

        None for a single active component (r = 1, no gradient), which saves the work.
        """
        v = view or self.view(x.dtype)
        if v.slots.shape[0] == 1:
            return None
        return torch.softmax(self.component_log_prob(x, v), dim=1)

    def sample(self, n, generator=None, dtype=None, device=None):
        """Reparameterised draws given the component: (x (n, dim), component slot (n,)).

        The noise is drawn first (then the component, only when more than one is
        active), so that one component at N(0, sigma^2) draws what DIS's prior draws.
        """
        dtype = dtype or torch.get_default_dtype()
        eps = self.space.noise(n, generator, dtype, device)
        v = self.view(dtype)
        if v.slots.shape[0] > 1:
            draw_on = generator.device if generator is not None else eps.device
            probs = v.log_alpha.detach().exp().to(draw_on, torch.float64)
            idx = torch.multinomial(probs, int(n), replacement=True, generator=generator)
            idx = idx.to(eps.device)
        else:
            idx = torch.zeros(int(n), dtype=torch.long, device=eps.device)
        x = v.s2.to(eps.device)[idx].sqrt() * eps
        if v.means is not None:
            x = x + v.means.to(eps.device)[idx]
        return x, v.slots.to(eps.device)[idx]

    # -- refinement -------------------------------------------------------------------
    @torch.no_grad()
    def add_component(self, mean: torch.Tensor, scale: torch.Tensor, step: int = 0) -> int:
        """Switch on the first free slot with ``mean``, ``scale`` and weight 1 / (K + 1).

        The active components keep their proportions. Returns the slot.
        """
        free = (~self.active).nonzero()
        if free.numel() == 0:
            raise ConfigError(f"all {self.max_components} prior components are in use")
        slot, k = int(free[0]), self.n_active
        logits = self.gain * self.raw_logits[self.active]
        if not self.com_free:
            self.raw_means[slot] = mean.to(self.raw_means) / (self.length * self.gain)
        target = (scale.to(self.raw_scales) / self.length).expand_as(self.raw_scales[slot])
        self.raw_scales[slot] = (_inv_softplus(target) - _ONE) / self.gain
        self.raw_logits[slot] = (torch.logsumexp(logits, 0) - math.log(k)) / self.gain
        self.active[slot] = True
        self.added_at[slot] = int(step)
        return slot

    def extra_repr(self) -> str:
        kind = "isotropic, CoM-free" if self.com_free else "diagonal"
        return f"active={self.n_active}/{self.max_components}, {kind}, sigma={self.length}"


class LangevinMixtureReference(nn.Module):
    """The Langevin diffusion of a :class:`MixturePrior`, with a learnable horizon.

    It has the reference interface the sampler base uses (``space``, ``sample_prior``,
    ``prior_log_prob``, ``base_control`` = 0: the uncontrolled generative process is the
    stationary reference) and gives the per-step kernels of :class:`MixtureProcess`.

    Parameters
    ----------
    prior
        p_phi.
    fractions
        Grid times as fractions of the horizon, (N + 1,) from 0 to 1.
    beta_min, beta_max
        Noise rates at the target and prior ends (per unit of nominal time).
    horizon
        Nominal (initial) horizon T_0.
    sigma
        Diffusion scale: g(t)^2 = sigma^2 beta(t).
    learn_horizon
        T = T_0 softplus(gain * tau + softplus^-1(1)) with tau trained (else fixed T_0).
    gain
        As in :class:`MixturePrior`.
    integrator
        ``"exponential"`` or ``"euler_maruyama"`` (see the module docstring).
    """

    def __init__(
        self, prior, fractions, beta_min, beta_max, horizon, sigma, learn_horizon, gain,
        integrator,
    ) -> None:  # fmt: skip
        super().__init__()
        self.prior, self.space = prior, prior.space
        r = torch.as_tensor(fractions, dtype=torch.float64)
        dr, dr2 = r[1:] - r[:-1], r[1:] ** 2 - r[:-1] ** 2
        integrals = beta_max * dr + 0.5 * (beta_min - beta_max) * dr2
        self.register_buffer("fractions", r)
        self.register_buffer("beta_integrals", integrals)  # int beta over each step, per T_0
        self.horizon0, self.sigma, self.gain = float(horizon), float(sigma), float(gain)
        self.integrator = integrator
        raw = torch.zeros((), dtype=torch.float64)
        if learn_horizon:
            self.raw_horizon = nn.Parameter(raw)
        else:
            self.register_buffer("raw_horizon", raw)

    @property
    def dim(self) -> int:
        return self.space.dim

    def horizon(self) -> torch.Tensor:
        """T (0-dim, differentiable when learned)."""
        return self.horizon0 * F.softplus(self.gain * self.raw_horizon + _ONE)

    def step_rates(self, dtype: torch.dtype) -> torch.Tensor:
        """int beta dt over each step on the learned time axis, (N,)."""
        return (self.horizon() * self.beta_integrals).to(dtype)

    def sample_prior(self, n, generator=None, dtype=None, device=None) -> torch.Tensor:
        return self.prior.sample(n, generator, dtype, device)[0]

    def prior_log_prob(self, x: torch.Tensor) -> torch.Tensor:
        return self.prior.log_prob(x)

    def base_control(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(x)

    def tables(self, view: PriorView, dtype: torch.dtype) -> KernelTables:
        """Per-step, per-component factors of the zero-control kernels, each (N, K, w).

        Exponential: a = exp(-rho), shift = mu (1 - a), var = sigma_k^2 (1 - a^2),
        factor = 2 sigma_k^2 (1 - a), with rho = sigma^2 int beta / (2 sigma_k^2).
        Euler-Maruyama: a = 1 - rho, shift = mu rho, var = factor = sigma^2 int beta.
        """
        g2 = (self.sigma**2 * self.step_rates(dtype))[:, None, None]  # (N, 1, 1)
        rho = 0.5 * g2 / view.s2
        if self.integrator == "euler_maruyama":
            a, var, factor = 1.0 - rho, g2.expand_as(rho), g2.expand_as(rho)
            shift = None if view.means is None else view.means * rho
        else:
            a, var = torch.exp(-rho), -view.s2 * torch.expm1(-2.0 * rho)
            factor = -2.0 * view.s2 * torch.expm1(-rho)
            shift = None if view.means is None else view.means * (1.0 - a)
        return KernelTables(a, shift, var, factor)

    @staticmethod
    def kernel(x: torch.Tensor, resp: torch.Tensor | None, tables: KernelTables, k: int):
        """Zero-control step k from x, mixed by the responsibilities ``resp`` (B, K).

        Returns (mean (B, dim), variance (B or 1, w), control factor (B or 1, w)), w = 1
        for isotropic components, else dim.
        """
        if resp is None:  # one component
            mean = x * tables.a[k, 0]
            if tables.shift is not None:
                mean = mean + tables.shift[k, 0]
            return mean, tables.var[k, :1], tables.factor[k, :1]
        mean = x * (resp @ tables.a[k])
        if tables.shift is not None:
            mean = mean + resp @ tables.shift[k]
        return mean, resp @ tables.var[k], resp @ tables.factor[k]

    def extra_repr(self) -> str:
        return (
            f"integrator={self.integrator!r}, horizon0={self.horizon0}, sigma={self.sigma}, "
            f"n_steps={self.beta_integrals.shape[0]}"
        )


class MixtureProcess:
    """GMP's discretised sampler: a :class:`LangevinMixtureReference` on a fixed grid.

    Parameters
    ----------
    reference
        The reference (prior, kernels, learned horizon).
    times
        Nominal generative times (N + 1,), the network's time input.
    """

    def __init__(self, reference: LangevinMixtureReference, times: torch.Tensor) -> None:
        self.reference = reference
        self.times = torch.as_tensor(times, dtype=torch.float64).detach().cpu()

    @property
    def n_steps(self) -> int:
        return self.times.shape[0] - 1

    @property
    def space(self):
        return self.reference.space

    def __repr__(self) -> str:
        return f"MixtureProcess(n_steps={self.n_steps}, {self.reference.extra_repr()})"

    def simulate(
        self, control_fn, target_log_prob, n, *, generator=None, noise_scale=1.0,
        keep_states=True, dtype=None, device=None,
    ) -> tuple[Rollout, torch.Tensor]:  # fmt: skip
        """Roll out n trajectories; returns (Rollout, prior component of each (n,)).

        As :func:`physsample.diffusion.simulate`: differentiable (reparameterised) under
        grad; ``noise_scale`` widens the noise but log F stays the sampler's density.
        """
        ref, space = self.reference, self.space
        dtype = dtype or torch.get_default_dtype()
        x, comp = ref.prior.sample(n, generator, dtype, device)
        view = ref.prior.view(dtype)
        tables, times = ref.tables(view, dtype), self.times.to(x)
        log_w = -ref.prior.log_prob(x, view)
        resp = ref.prior.responsibilities(x, view)
        states = [x] if keep_states else None
        for k in range(self.n_steps):
            mean, var, factor = ref.kernel(x, resp, tables, k)
            mean = mean + factor * space.project(control_fn(times[k].expand(x.shape[0]), x))
            noise = space.noise(x.shape[0], generator, dtype, x.device)
            x_next = mean + (noise_scale * torch.sqrt(var)) * noise
            resp_next = ref.prior.responsibilities(x_next, view)
            back_mean, back_var, _ = ref.kernel(x_next, resp_next, tables, k)
            log_w = log_w + _log_normal(space, x, back_mean, back_var)
            log_w = log_w - _log_normal(space, x_next, mean, var)
            x, resp = x_next, resp_next
            if keep_states:
                states.append(x)
        log_w = log_w + target_log_prob(x)
        return Rollout(torch.stack(states, 1) if keep_states else None, log_w, x), comp

    def log_weights_from_states(
        self, control_fn, final_log_prob, states, *, params, chunk=None, steps=None,
        log_weights=None,
    ) -> torch.Tensor:  # fmt: skip
        """log w (B,) of given states (B, N + 1, dim), differentiable in ``params``.

        As :func:`physsample.diffusion.log_weights_from_states`: ``chunk=None`` builds
        one graph; an integer computes the value without a graph (or takes
        ``log_weights``) and the backward pass recomputes ``chunk`` steps at a time;
        ``steps`` differentiates only these steps, scaled by N / len(steps). Non-finite
        states are zeroed for the gradient (their log w keeps its true value, which the
        losses drop).
        """
        states = states.detach()
        if chunk is None:
            if steps is not None:
                raise ConfigError("steps needs chunked mode (chunk=int)")
            if bool(torch.isfinite(states).all()):
                return self._log_ratio(control_fn, states, range(self.n_steps)) + final_log_prob
        if log_weights is None:
            with torch.no_grad():
                log_weights = self._log_ratio(control_fn, states, range(self.n_steps))
                log_weights = log_weights + final_log_prob
        clean = torch.where(torch.isfinite(states), states, 0.0)
        ks = list(range(self.n_steps)) if steps is None else [int(k) for k in steps]
        size = len(ks) if chunk is None else int(chunk)
        params = [p for p in params if p.requires_grad]

        def backward(grad: torch.Tensor) -> list[torch.Tensor]:
            total = [torch.zeros_like(p) for p in params]
            with torch.enable_grad():
                prior_term = -self.reference.prior.log_prob(clean[:, 0])
                _accumulate(total, prior_term, params, grad)
                for start in range(0, len(ks), size):
                    term = self._log_ratio(control_fn, clean, ks[start : start + size], False)
                    _accumulate(total, term, params, grad * (self.n_steps / len(ks)))
            return total

        return _Recomputed.apply(log_weights.detach(), backward, *params)

    def _log_ratio(self, control_fn, states, block, with_prior: bool = True) -> torch.Tensor:
        """[-log p_phi(x_0)] + sum over the steps in ``block`` of (log B_k - log F_k)."""
        ref, space = self.reference, self.space
        view = ref.prior.view(states.dtype)
        tables, times = ref.tables(view, states.dtype), self.times.to(states)
        total = -ref.prior.log_prob(states[:, 0], view) if with_prior else 0.0
        resp: dict[int, torch.Tensor | None] = {}
        for j in sorted(set(block) | {k + 1 for k in block}):
            resp[j] = ref.prior.responsibilities(states[:, j], view)
        for k in block:
            x, x_next = states[:, k], states[:, k + 1]
            mean, var, factor = ref.kernel(x, resp[k], tables, k)
            mean = mean + factor * space.project(control_fn(times[k].expand(x.shape[0]), x))
            back_mean, back_var, _ = ref.kernel(x_next, resp[k + 1], tables, k)
            total = total + _log_normal(space, x, back_mean, back_var)
            total = total - _log_normal(space, x_next, mean, var)
        return total


class _Recomputed(torch.autograd.Function):
    """Identity on precomputed log-weights whose backward recomputes the graph in chunks."""

    @staticmethod
    def forward(ctx, log_weights, backward, *params):
        ctx.backward = backward
        return log_weights.clone()

    @staticmethod
    def backward(ctx, grad):
        return (None, None, *ctx.backward(grad))


def _accumulate(total, term, params, grad) -> None:
    if isinstance(term, torch.Tensor) and term.requires_grad:
        grads = torch.autograd.grad(term, params, grad_outputs=grad, allow_unused=True)
        for acc, g in zip(total, grads, strict=True):
            if g is not None:
                acc.add_(g)


class GMP(DiffusionSampler):
    """DIS with an end-to-end learned Gaussian-mixture prior and learned horizon (+ IMR).

    Parameters
    ----------
    system
        The target.
    n_components
        Prior components at the start (1 with IMR, as in the paper).
    imr
        Iterative model refinement: add a component every ``imr_every`` steps.
    imr_every
        M, steps between refinements.
    max_components
        Slots allocated with IMR; default max(10, n_components). Without IMR it is
        ``n_components`` (a given value is ignored, so that configs can switch IMR).
    learn_horizon
        Train the horizon (time step) too.
    sigma
        Initial prior scale and diffusion scale (g^2 = sigma^2 beta); with one component
        the untrained GMP is DIS with this sigma.
    beta_min, beta_max, horizon
        DIS's linear noise schedule; ``horizon`` is the initial T.
    prior_lr
        Relative step size of the prior and horizon parameters (module docstring).
    imr_candidates
        Sampler trajectories started as MALA chains per refinement (default batch_size).
    imr_mala_steps
        MALA warm-up steps, and as many steps after, per refinement.
    **options
        Shared options of :class:`~physsample.methods.base.DiffusionSampler`;
        ``integrator`` is ``"exponential"`` (default) or ``"euler_maruyama"``, ``chunk``
        and ``n_grad_steps`` work as for the other methods.

    Attributes
    ----------
    imr_history : list of dict
        The refinements made in this process (step, slot, score, mean, scale).

    Examples
    --------
    >>> import physsample as ps                                     # doctest: +SKIP
    >>> sampler = GMP(ps.systems.get("funnel"), imr=False)          # doctest: +SKIP
    >>> sampler.fit(500).log_z(10_000)                              # doctest: +SKIP
    """

    method_name = "gmp"
    train_reference = True

    def __init__(
        self,
        system,
        *,
        n_components: int = 1,
        imr: bool = True,
        imr_every: int = 100,
        max_components: int | None = None,
        learn_horizon: bool = True,
        sigma: float = 1.0,
        beta_min: float = 0.1,
        beta_max: float = 10.0,
        horizon: float = 1.0,
        prior_lr: float = 1e-2,
        imr_candidates: int | None = None,
        imr_mala_steps: int = 50,
        **options,
    ) -> None:
        if not imr:
            max_components = n_components
        elif max_components is None:
            max_components = max(10, int(n_components))
        self.method_settings = {
            "n_components": int(n_components),
            "imr": bool(imr),
            "imr_every": int(imr_every),
            "max_components": int(max_components),
            "learn_horizon": bool(learn_horizon),
            "sigma": float(sigma),
            "beta_min": float(beta_min),
            "beta_max": float(beta_max),
            "horizon": float(horizon),
            "prior_lr": float(prior_lr),
            "imr_candidates": None if imr_candidates is None else int(imr_candidates),
            "imr_mala_steps": int(imr_mala_steps),
        }
        self.imr_history: list[dict[str, Any]] = []
        super().__init__(system, **options)

    # ------------------------------------------------------------------ building
    def build_reference(self) -> LangevinMixtureReference:
        m, s = self.method_settings, self.settings
        _check_method_settings(m, s)
        gain = m["prior_lr"] / float(s["lr"])
        prior = MixturePrior(
            self.space, m["max_components"], m["n_components"], m["sigma"], gain, s["seed"]
        )
        make_grid = {"uniform": uniform_grid, "cosine": cosine_grid}[s["grid"]]
        return LangevinMixtureReference(
            prior, make_grid(self.n_steps, 1.0), m["beta_min"], m["beta_max"], m["horizon"],
            m["sigma"], m["learn_horizon"], gain, _INTEGRATORS[s["integrator"]],
        )  # fmt: skip

    def _build_process(self, reference: LangevinMixtureReference) -> MixtureProcess:
        return MixtureProcess(reference, reference.fractions * reference.horizon0)

    @property
    def prior(self) -> MixturePrior:
        """The learned prior p_phi (current, not EMA, parameters)."""
        return self.reference.prior

    @property
    def horizon(self) -> float:
        """The learned horizon T (current parameters)."""
        return float(self.reference.horizon().detach())

    # ------------------------------------------------------------------ the path
    def _simulate(self, model, target_log_prob, n, generator, noise_scale=1.0, keep_states=True):
        out, _ = self.process.simulate(
            model, target_log_prob, n, generator=generator, noise_scale=noise_scale,
            keep_states=keep_states, dtype=self.dtype, device=self.device,
        )  # fmt: skip
        return out

    def _path_log_weights(self, model, states, final_log_prob, log_weights, steps):
        return self.process.log_weights_from_states(
            model, final_log_prob, states, params=list(model.parameters()),
            chunk=self.settings["chunk"], steps=steps, log_weights=log_weights,
        )  # fmt: skip

    def _kl_loss(self, model, generator):
        """Reverse KL, pathwise given the component plus its score-function term.

        Under torchrun each rank simulates its share of the batch; the loss, the drop
        rule and the leave-one-out baseline are those of the global batch.
        """
        out, comp = self.process.simulate(
            model, self._target, distributed.local_batch_size(self.batch_size),
            generator=generator, keep_states=False, dtype=self.dtype, device=self.device,
        )  # fmt: skip
        log_w = out.log_weights
        self._record_batch(log_w)
        max_deviation = self.settings["max_deviation"]
        loss, info = distributed.global_reverse_kl_loss(log_w, max_deviation=max_deviation)
        if self.prior.n_active > 1:
            everything = distributed.gather(log_w.detach())
            mask_all, _ = usable_mask(everything, max_deviation)
            lw_all = torch.where(mask_all, everything, 0.0)
            n = mask_all.sum().clamp(min=2)
            here = distributed.local_slice(log_w.shape[0])
            mask, lw = mask_all[here], lw_all[here]
            baseline = (lw_all.sum() - lw) / (n - 1)  # leave-one-out, over the global batch
            log_alpha = self.prior.log_weights().to(log_w.dtype)[comp]
            surrogate = torch.where(mask, (lw - baseline) * log_alpha, 0.0).sum() / n
            loss = loss - distributed.with_global_value(surrogate)
        return loss, self._info(info)

    # ------------------------------------------------------------------ IMR
    def _loss(self, model, generator, step):
        if self._refinement_due(step):
            self.refine(generator, step)
            self._sync_prior()
        return super()._loss(model, generator, step)

    def _sync_prior(self) -> None:
        """Under torchrun, every rank takes rank 0's new component (and its EMA copy).

        The slot that is switched on is the same on every rank (the first free one); the
        MALA candidates, hence the mean and scale, differ between the ranks' streams.
        """
        if distributed.world_size() == 1:
            return
        prior_params = list(self.prior.parameters())
        ids = {id(p) for p in prior_params}
        ema = self.trainer.ema or []
        averages = [a for p, a in zip(self.trainer.params, ema, strict=False) if id(p) in ids]
        distributed.broadcast_tensors(prior_params + averages)

    def _refinement_due(self, step: int) -> bool:
        m = self.method_settings
        due = m["imr"] and step > 0 and step % m["imr_every"] == 0
        return due and self.prior.n_active < self.prior.max_components

    def refine(self, generator: torch.Generator | None = None, step: int | None = None):
        """Add one prior component now (the IMR rule of :mod:`physsample.methods.imr`).

        Candidates are the current sampler's samples moved by short MALA runs; the new
        parameters are also written into the EMA. Returns the
        :class:`~physsample.methods.imr.NewComponent`, or None if all slots are used.
        """
        if self.prior.n_active >= self.prior.max_components:
            return None
        m = self.method_settings
        generator = generator if generator is not None else self.trainer.generator
        step = self.trainer.step if step is None else int(step)
        n = int(m["imr_candidates"] or self.batch_size)
        with torch.no_grad():
            start = self._simulate(self.model, self._target, n, generator, keep_states=False)
        seed = int(torch.randint(2**62, (1,), generator=generator, device=generator.device))
        candidates, evaluations = mala_candidates(
            self.system, start.samples, m["imr_mala_steps"], seed
        )
        if candidates.shape[0] == 0:
            self.model.energy_evaluations += evaluations
            return None
        new = propose_component(self.system, self.prior, candidates)
        self.model.energy_evaluations += evaluations + new.energy_evaluations
        slot = self.prior.add_component(new.mean, new.scale, step)
        self._copy_slot_to_ema(slot)
        if not hasattr(self, "imr_history"):  # a loaded sampler
            self.imr_history = []
        self.imr_history.append(
            {"step": step, "slot": slot, "score": new.score, "mean": new.mean, "scale": new.scale}
        )
        return new

    def _copy_slot_to_ema(self, slot: int) -> None:
        trainer = self.trainer
        if trainer.ema is None:
            return
        prior_params = {id(p) for p in self.prior.parameters()}
        with torch.no_grad():
            for param, average in zip(trainer.params, trainer.ema, strict=True):
                if id(param) in prior_params:
                    average[slot] = param[slot]

    def _sample_metadata(self, log_w: torch.Tensor, wall_time: float) -> dict[str, Any]:
        meta = super()._sample_metadata(log_w, wall_time)
        with torch.no_grad(), self.trainer.ema_weights():
            prior = self.prior
            meta["prior"] = {
                "n_active": prior.n_active,
                "weights": prior.log_weights()[prior.active].exp().tolist(),
                "horizon": self.horizon,
                "added_at": prior.added_at[prior.active].tolist(),
            }
        return meta


def _check_method_settings(m: dict[str, Any], s: dict[str, Any]) -> None:
    if m["n_components"] < 1 or m["max_components"] < m["n_components"]:
        raise ConfigError(
            f"need 1 <= n_components <= max_components; got {m['n_components']} and "
            f"{m['max_components']}"
        )
    for key in ("imr_every", "imr_mala_steps", "sigma", "beta_min", "beta_max", "horizon"):
        if not m[key] > 0:
            raise ConfigError(f"{key} must be positive, got {m[key]}")
    if m["beta_max"] < m["beta_min"]:
        raise ConfigError(f"need beta_min <= beta_max, got {m['beta_min']} > {m['beta_max']}")
    if not m["prior_lr"] > 0 or (m["imr_candidates"] is not None and m["imr_candidates"] < 1):
        raise ConfigError("prior_lr and imr_candidates must be positive")
    if s["integrator"] not in _INTEGRATORS:
        raise ConfigError(
            f"GMP: integrator must be exponential or euler_maruyama, got {s['integrator']!r}"
        )
