"""Iterative model refinement (IMR) for GMP: where to put the next prior component.

Every ``imr_every`` training steps, :class:`~physsample.methods.gmp.GMP` asks this
module for one new component of its Gaussian-mixture prior p_phi:

1. **Candidates.** Short MALA runs on the target (:func:`physsample.mcmc.mala`, step
   size adapted per chain during a warm-up as long as the run) start from the current
   sampler's samples; the final state of each chain is a candidate. The sampler's
   samples find the regions it already reaches; MALA pulls them into the nearby
   high-density regions of the target, including modes the sampler only grazes.
2. **Selection.** The candidate that maximises ``log pi~(x) - log p_phi(x)``: high
   target density, little prior mass. This is the point where the density ratio that the
   control must otherwise create from nothing is largest, i.e. where a new component
   removes the most importance-weight variance. Where the prior already covers the
   target the ratio is flat (about log Z), so a covered mode is never chosen over an
   uncovered one. (A limitation: for heavy-tailed modes, e.g. Student-t, a Gaussian
   component always has too little mass in the tails, so the rule may pick a tail point
   of a covered mode; restricting the choice to the candidates of above-median target
   density did not help there and missed modes in the 4-mode test, so it is not used.)
3. **Mean and scale (diagonal Laplace rule, R^dim).** The curvature h_j = -d^2 log pi~ /
   dx_j^2 at the chosen x* (central differences of the score, 2 dim + 1 gradient
   evaluations) gives per-coordinate variances 1 / h_j, the Laplace approximation of the
   mode x* sits in; coordinates with h_j <= 0 (x* in a locally convex tail) take the
   median of the valid variances (or, if none, of the current prior's variances). The
   mean is x* moved by one diagonal Newton step, x* + grad log pi~(x*) / h, limited to 3
   standard deviations per coordinate: for a Gaussian mode this is its exact centre,
   whereas x* itself, a typical draw, sits about sqrt(dim) standard deviations from it.
   Scales are clamped to [1e-3, 1] times the widest current component, so that a new
   component never swallows the prior it refines.
4. **Particle systems** (CoM-free isotropic components centred at the origin): only the
   scale is chosen, s = |x*| / sqrt(effective_dim), so that the component's typical
   radius s sqrt(effective_dim) is the candidate's radius.
5. **Weight.** The new component gets an equal share, 1 / (K + 1) of the mass, the
   others keep their proportions. The log-variance gradient that a component receives
   is proportional to the trajectories that start in it: a small weight would leave the
   new component, and the control near it, untrained for a long time; the weights are
   trained afterwards anyway.

The rule is deterministic given the candidates; its randomness (MALA) comes from a seed
drawn from the trainer's generator, so that checkpointed runs resume exactly.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from physsample.mcmc import mala

__all__ = ["NewComponent", "mala_candidates", "propose_component", "laplace_diagonal"]

MAX_NEWTON_STDS = 3.0
SCALE_RANGE = (1e-3, 1.0)  # relative to the widest current component


class NewComponent(NamedTuple):
    """A proposed prior component (float64, on the CPU).

    Attributes
    ----------
    mean : torch.Tensor
        (dim,); zeros for a CoM-free particle prior.
    scale : torch.Tensor
        (dim,) standard deviations, or (1,) for an isotropic component.
    score : float
        log pi~(x*) - log p_phi(x*) of the chosen candidate (nats).
    candidate : torch.Tensor
        x*, (dim,).
    energy_evaluations : int
        Target evaluations made by the selection and the Laplace rule.
    """

    mean: torch.Tensor
    scale: torch.Tensor
    score: float
    candidate: torch.Tensor
    energy_evaluations: int


def mala_candidates(system, x_start: torch.Tensor, n_steps: int, seed: int) -> tuple:
    """Final states of short MALA chains started at ``x_start`` (C, dim).

    ``n_steps`` warm-up steps (per-chain step-size adaptation) then ``n_steps`` steps;
    returns (candidates (C, dim) float64, energy evaluations). Chains that start at a
    non-finite target density are dropped.
    """
    x = x_start.detach().to(torch.float64)
    with torch.no_grad():
        ok = torch.isfinite(system.log_prob(x))
    x = x[ok]
    if x.shape[0] == 0:
        return x, int(x_start.shape[0])
    out = mala(system, x, n_steps=n_steps, n_warmup=n_steps, thin=n_steps, seed=seed)
    return out.x, int(out.metadata["energy_evaluations"]) + int(x_start.shape[0])


def laplace_diagonal(system, x: torch.Tensor, eps: float = 1e-4) -> tuple:
    """Score g (dim,) and diagonal curvature h = -diag Hess log pi~ (dim,) at x (dim,).

    Central differences of the score with steps ``eps * max(1, |x_j|)``; float64.
    """
    d = x.shape[0]
    step = eps * torch.clamp(x.abs(), min=1.0)
    shifts = torch.diag_embed(step)
    points = torch.cat([x[None], x + shifts, x - shifts])
    scores = system.score(points)
    g = scores[0]
    h = -(scores[1 : d + 1].diagonal() - scores[d + 1 :].diagonal()) / (2 * step)
    return g, h


def propose_component(system, prior, candidates: torch.Tensor) -> NewComponent:
    """The new component for ``prior`` from MALA ``candidates`` (rule: module docstring).

    Parameters
    ----------
    system
        The target.
    prior
        The current :class:`~physsample.methods.gmp.MixturePrior`.
    candidates
        (C, dim) float64 points, C >= 1.
    """
    with torch.no_grad():
        x = candidates.to(torch.float64)
        log_target = system.log_prob(x)
        score = log_target - prior.log_prob(x)
        score = torch.where(torch.isfinite(score), score, torch.full_like(score, -math.inf))
        best = int(torch.argmax(score))
        x_star = x[best]
        widest = float(prior.active_scales().max())
        low, high = SCALE_RANGE[0] * widest, SCALE_RANGE[1] * widest
        evaluations = x.shape[0]
        if prior.com_free:
            radius = float(x_star.norm()) / math.sqrt(prior.space.effective_dim)
            scale = torch.tensor([min(max(radius, low), high)], dtype=torch.float64)
            mean = torch.zeros_like(x_star)
        else:
            mean, scale = _laplace_component(system, prior, x_star, low, high)
            evaluations += 2 * x_star.shape[0] + 1
    return NewComponent(mean.cpu(), scale.cpu(), float(score[best]), x_star.cpu(), evaluations)


def _laplace_component(system, prior, x_star, low, high):
    """Mean and per-coordinate scale from the diagonal Laplace rule at x*."""
    g, h = laplace_diagonal(system, x_star)
    valid = torch.isfinite(h) & (h > 0) & torch.isfinite(g)
    if bool(valid.any()):
        fallback = torch.median(1.0 / h[valid])
    else:
        fallback = torch.median(prior.active_scales().to(torch.float64) ** 2)
    var = torch.where(valid, 1.0 / torch.where(valid, h, torch.ones_like(h)), fallback)
    scale = var.sqrt().clamp(low, high)
    newton = torch.where(valid, g * var, torch.zeros_like(g))
    limit = MAX_NEWTON_STDS * scale
    mean = x_star + torch.maximum(torch.minimum(newton, limit), -limit)
    return mean, scale
