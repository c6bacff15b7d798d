"""Training losses on path log-weights, and the log Z / ESS estimators.

- :func:`log_variance_loss`: the sample variance of log w over the batch. Its states are
  simulated without a graph (stop-gradient control, optional exploration noise) and
  the log-weights recomputed with :func:`~physsample.diffusion.path.log_weights_from_states`.
- :func:`reverse_kl_loss`: -mean(log w) on reparameterised trajectories
  (:func:`~physsample.diffusion.path.simulate` under grad); its expectation is
  KL(sampler path || target path) - log Z.

Both drop trajectories whose log w is not finite or extreme, and report how many in
``info`` (0-dim tensors, so no host synchronisation here; ``float()`` them when logging).
Extreme means further from the batch median than the cut
``max(max_deviation, SPREAD_MULTIPLE * 1.4826 * MAD)`` (MAD: median absolute deviation
of the finite log w from their median, 1.4826 * MAD the robust standard deviation): the
cut follows the batch's own spread, so a batch whose log w are all spread over
thousands of nats (early training in high dimension) keeps its bulk, and since at
least half of the finite values lie within one MAD of the median, the rule never drops
more than half of the finite trajectories. ``max_deviation`` (nats) is the floor of the
cut. A batch with fewer than two usable trajectories gives a NaN loss, so that a
training loop skips the step rather than taking one on nothing.

Examples
--------
Log-variance step with exploration and chunked recomputation::

    with torch.no_grad():
        out = simulate(process, control, system.log_prob, 512, generator=g, noise_scale=1.2)
    log_w = log_weights_from_states(process, control, system.log_prob, out.states,
                                    chunk=16, log_weights=out.log_weights, params=params)
    loss, info = log_variance_loss(log_w)
    loss.backward()
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

__all__ = [
    "LogZEstimate",
    "usable_mask",
    "log_variance_loss",
    "reverse_kl_loss",
    "log_z_estimate",
]

DEFAULT_MAX_DEVIATION = 1000.0  # nats: the floor of the outlier cut
SPREAD_MULTIPLE = 20.0  # the cut in robust standard deviations (1.4826 * MAD)
_MAD_TO_SD = 1.4826  # 1 / Phi^-1(3/4): MAD -> standard deviation for a normal sample


class LogZEstimate(NamedTuple):
    """Estimates from path log-weights (0-dim float64 tensors).

    Attributes
    ----------
    log_z : torch.Tensor
        logsumexp(log w) - log N (importance-sampling estimate of log Z).
    elbo : torch.Tensor
        mean(log w), a lower bound on log Z in expectation.
    ess : torch.Tensor
        (sum w)^2 / (N sum w^2), in [0, 1].
    """

    log_z: torch.Tensor
    elbo: torch.Tensor
    ess: torch.Tensor


def usable_mask(
    log_w: torch.Tensor, max_deviation: float | None = DEFAULT_MAX_DEVIATION
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Which trajectories a loss uses: finite log w that are not extreme.

    A finite log w is extreme when it is further from the median of the finite values
    than ``max(max_deviation, SPREAD_MULTIPLE * 1.4826 * MAD)``, with MAD the median
    absolute deviation of the finite values from that median. At most half of the
    finite values are ever extreme. No host synchronisation.

    Parameters
    ----------
    log_w
        Shape (B,).
    max_deviation
        Floor of the cut, in nats; None keeps every finite value.

    Returns
    -------
    mask : torch.Tensor
        (B,) bool.
    info : dict
        ``n_used``, ``n_nonfinite``, ``n_extreme`` (0-dim integer tensors).
    """
    values = log_w.detach()
    finite = torch.isfinite(values)
    mask = finite
    if max_deviation is not None:
        nan = torch.full_like(values, math.nan)
        median = torch.nanmedian(torch.where(finite, values, nan))
        deviation = (values - median).abs()
        mad = torch.nanmedian(torch.where(finite, deviation, nan))
        spread = SPREAD_MULTIPLE * _MAD_TO_SD * torch.nan_to_num(mad, nan=0.0)
        cut = torch.clamp(spread, min=float(max_deviation))
        mask = finite & (deviation <= cut)
    info = {
        "n_used": mask.sum(),
        "n_nonfinite": (~finite).sum(),
        "n_extreme": (finite & ~mask).sum(),
    }
    return mask, info


def log_variance_loss(
    log_w: torch.Tensor, *, max_deviation: float | None = DEFAULT_MAX_DEVIATION
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Unbiased sample variance of log w over the usable trajectories.

    Parameters
    ----------
    log_w
        (B,), differentiable in the control (see module docstring).
    max_deviation
        Floor in nats of the outlier cut around the median (see :func:`usable_mask`;
        None: drop only non-finite values).

    Returns
    -------
    loss : torch.Tensor
        0-dim; sum_i (log w_i - mean)^2 / (n_used - 1) over usable i.
    info : dict
        As :func:`usable_mask`.
    """
    mask, info = usable_mask(log_w, max_deviation)
    n = info["n_used"].to(log_w.dtype)
    kept = torch.where(mask, log_w, torch.zeros_like(log_w))
    mean = kept.sum() / n
    sq = torch.where(mask, (kept - mean) ** 2, torch.zeros_like(log_w))
    return sq.sum() / (n - 1), info


def reverse_kl_loss(
    log_w: torch.Tensor, *, max_deviation: float | None = DEFAULT_MAX_DEVIATION
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """-mean(log w) over the usable trajectories (reverse KL up to -log Z).

    ``log_w`` must come from :func:`~physsample.diffusion.path.simulate` under grad.
    A dropped trajectory gets zero gradient from the loss, but a non-finite
    intermediate inside the solver can still make the parameter gradient non-finite;
    the training loop's finiteness guard then skips the step.

    Returns
    -------
    loss : torch.Tensor
        0-dim.
    info : dict
        As :func:`usable_mask`.
    """
    mask, info = usable_mask(log_w, max_deviation)
    n = info["n_used"].to(log_w.dtype)
    kept = torch.where(mask, log_w, torch.zeros_like(log_w))
    loss = -kept.sum() / n
    return torch.where(n >= 2, loss, torch.full_like(loss, math.nan)), info


def log_z_estimate(log_w: torch.Tensor) -> LogZEstimate:
    """log Z_hat = logsumexp - log N, ELBO = mean and ESS, computed in float64.

    Nothing is dropped: a weight of exp(-inf) counts as zero; NaN or +inf make the
    estimates NaN or inf, as they should.

    Parameters
    ----------
    log_w
        (N,) path log-weights (detached here).

    Examples
    --------
    >>> est = log_z_estimate(torch.zeros(10))
    >>> float(est.log_z), float(est.ess)
    (0.0, 1.0)
    """
    lw = log_w.detach().to(torch.float64).reshape(-1)
    log_n = math.log(lw.shape[0])
    lse = torch.logsumexp(lw, dim=0)
    ess = torch.exp(2 * lse - torch.logsumexp(2 * lw, dim=0) - log_n)
    return LogZEstimate(lse - log_n, lw.mean(), ess)
