"""The stochastic-process core of the diffusion samplers.

Pieces, in the order a method assembles them:

1. a :mod:`schedule <physsample.diffusion.schedules>` (VP-OU for DIS/LRDS, constant OU
   for DDS, pinned Brownian motion for PIS) and a :mod:`time grid
   <physsample.diffusion.time_grids>` in generative time (0 = prior, T = target);
2. a :class:`GaussianSpace` (R^dim, or CoM-free for particle systems);
3. a :mod:`reference <physsample.diffusion.references>`: prior, noising transitions
   and closed-form reference score (Gaussian, or a noised Gaussian mixture for LRDS);
4. a :class:`GenerativeProcess` (reference + grid + integrator) and a control
   ``u(t, x)``, usually ``residual_control(reference, net)``;
5. :func:`simulate` / :func:`log_weights_from_states` for trajectories and exact path
   log-weights, and the :mod:`losses <physsample.diffusion.losses>`.

Example
-------
>>> import torch
>>> from physsample import diffusion as D
>>> schedule = D.LinearVPSchedule(beta_min=0.1, beta_max=10.0)
>>> reference = D.GaussianReference(schedule, D.GaussianSpace(2))
>>> process = D.GenerativeProcess(reference, D.uniform_grid(20), integrator="exponential")
>>> net = lambda t, x: torch.zeros_like(x)
>>> out = D.simulate(process, D.residual_control(reference, net),
...                  lambda x: -0.5 * (x**2).sum(1), 1000,
...                  generator=torch.Generator().manual_seed(0), dtype=torch.float64)
>>> est = D.log_z_estimate(out.log_weights)          # exact here: log Z = log 2 pi
>>> round(float(est.log_z), 6) == round(float(torch.log(torch.tensor(2 * torch.pi))), 6)
True
"""

from __future__ import annotations

from physsample.diffusion.block_mixture import BlockMixtureReference
from physsample.diffusion.gaussian import GaussianSpace, helmert_basis
from physsample.diffusion.integrators import (
    INTEGRATORS,
    GenerativeCoefficients,
    NoisingCoefficients,
    euler_maruyama,
    exponential_integrator,
    generative_coefficients,
    noising_coefficients,
)
from physsample.diffusion.losses import (
    LogZEstimate,
    log_variance_loss,
    log_z_estimate,
    reverse_kl_loss,
    usable_mask,
)
from physsample.diffusion.mixture import GMM, fit_gmm
from physsample.diffusion.path import (
    GenerativeProcess,
    Rollout,
    StepCoefficients,
    log_weights_from_states,
    random_steps,
    residual_control,
    simulate,
)
from physsample.diffusion.references import (
    GaussianMixtureReference,
    GaussianReference,
    Reference,
)
from physsample.diffusion.schedules import (
    ConstantOUSchedule,
    LinearVPSchedule,
    OUSchedule,
    PinnedBrownianSchedule,
    Schedule,
)
from physsample.diffusion.time_grids import check_grid, cosine_grid, uniform_grid

__all__ = [
    "Schedule",
    "OUSchedule",
    "LinearVPSchedule",
    "ConstantOUSchedule",
    "PinnedBrownianSchedule",
    "uniform_grid",
    "cosine_grid",
    "check_grid",
    "GaussianSpace",
    "helmert_basis",
    "GMM",
    "fit_gmm",
    "Reference",
    "GaussianReference",
    "GaussianMixtureReference",
    "BlockMixtureReference",
    "GenerativeCoefficients",
    "NoisingCoefficients",
    "euler_maruyama",
    "exponential_integrator",
    "noising_coefficients",
    "generative_coefficients",
    "INTEGRATORS",
    "GenerativeProcess",
    "StepCoefficients",
    "Rollout",
    "simulate",
    "log_weights_from_states",
    "residual_control",
    "random_steps",
    "LogZEstimate",
    "usable_mask",
    "log_variance_loss",
    "reverse_kl_loss",
    "log_z_estimate",
]
