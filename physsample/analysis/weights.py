"""Estimators from importance log-weights: log Z with a bootstrap interval, ELBO, EUBO, ESS.

With path log-weights log w_i (target minus model path log-density, as the samplers
return them in ``Samples.log_weights``), following BENCHMARKS.md:

- log Z_hat = logsumexp(log w) - log N (unbiased for Z, biased low for log Z);
- ELBO = mean(log w) <= log Z in expectation;
- EUBO = mean(log w) over trajectories started from *reference* (target) samples,
  >= log Z in expectation;
- ESS = (sum w)^2 / (N sum w^2), in [0, 1].

The point estimates come from :func:`physsample.diffusion.losses.log_z_estimate`.

Example
-------
>>> import numpy as np
>>> log_w = np.random.default_rng(0).normal(0.0, 0.1, size=1000)
>>> est = log_z(log_w)
>>> est.low < est.value < est.high
True
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from scipy.special import logsumexp

from physsample.analysis._util import Estimate, check_confidence, log_weights_of, order_interval
from physsample.diffusion.losses import log_z_estimate
from physsample.errors import ConfigError, ShapeError

__all__ = ["Estimate", "log_z", "elbo", "eubo", "ess", "bootstrap_chunks"]


def _log_w(samples_or_log_w: Any, what: str) -> np.ndarray:
    lw = log_weights_of(samples_or_log_w, what)
    if lw is None:
        raise ConfigError(
            f"{what}: the samples have no log_weights; log Z, ELBO and ESS need "
            "importance weights (a trained sampler's output)"
        )
    if lw.size == 0:
        raise ShapeError(f"{what}: need at least one log-weight")
    return lw


def bootstrap_chunks(n: int, n_bootstrap: int, rng: np.random.Generator, max_elems: int = 1 << 22):
    """Yield i.i.d. bootstrap index arrays (k, n), k replicates at a time, B in total."""
    per = max(1, max_elems // max(n, 1))
    done = 0
    while done < n_bootstrap:
        k = min(per, n_bootstrap - done)
        yield rng.integers(0, n, size=(k, n))
        done += k


def log_z(
    samples_or_log_w: Any,
    n_bootstrap: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> Estimate:
    """Importance-sampling estimate of log Z with a bootstrap confidence interval.

    Parameters
    ----------
    samples_or_log_w
        :class:`~physsample.Samples` with ``log_weights``, or log-weights (N,).
    n_bootstrap
        Number of i.i.d. bootstrap replicates of the N log-weights.
    seed
        Seed of the bootstrap.
    confidence
        Coverage of the percentile interval.

    Returns
    -------
    Estimate
        ``value`` = logsumexp(log w) - log N and ``ci`` = (low, high), in nats (for a
        system's reduced energy, log Z is dimensionless).

    Notes
    -----
    The bootstrap assumes independent samples and a finite variance of the weights;
    with heavy-tailed weights (ESS close to 1/N) the interval is too narrow and the
    estimate is biased low.
    """
    lw = _log_w(samples_or_log_w, "log_z")
    value = float(log_z_estimate(torch.from_numpy(lw)).log_z)
    reps = [
        logsumexp(lw[idx], axis=1) - math.log(lw.size)
        for idx in bootstrap_chunks(lw.size, int(n_bootstrap), np.random.default_rng(seed))
    ]
    low, high = order_interval(np.concatenate(reps), check_confidence(confidence))
    return Estimate(value, (float(low), float(high)))


def elbo(samples_or_log_w: Any) -> float:
    """ELBO = mean(log w) of the sampler's own trajectories (a lower bound on log Z)."""
    return float(log_z_estimate(torch.from_numpy(_log_w(samples_or_log_w, "elbo"))).elbo)


def eubo(log_w_of_reference: Any) -> float:
    """EUBO = mean(log w) over trajectories started from reference (target) samples.

    Parameters
    ----------
    log_w_of_reference
        (N,) path log-weights of the *backward* trajectories that start at exact or
        reference samples of the target (or Samples holding them); only methods whose
        reference process can be run backwards provide them.

    Returns
    -------
    float
        An upper bound on log Z in expectation.
    """
    return float(np.mean(_log_w(log_w_of_reference, "eubo")))


def ess(samples_or_log_w: Any) -> float:
    """Normalised effective sample size (sum w)^2 / (N sum w^2), in [0, 1].

    Unweighted :class:`~physsample.Samples` give 1.0.
    """
    if getattr(samples_or_log_w, "log_weights", 0) is None:
        return 1.0
    return float(log_z_estimate(torch.from_numpy(_log_w(samples_or_log_w, "ess"))).ess)
