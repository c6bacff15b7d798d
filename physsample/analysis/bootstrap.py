"""Bootstrap plans: i.i.d. for independent samples, blocks for correlated MD/MCMC output.

A trained sampler's output is a set of independent weighted draws, so an i.i.d.
bootstrap over samples is valid. MD and MCMC output is correlated in time, and an
i.i.d. bootstrap then gives intervals that are too narrow by about sqrt(tau). For
unweighted samples :func:`plan_bootstrap` therefore

1. splits the samples into independent chains from the metadata that
   :mod:`physsample.mcmc` writes (``run_md``: the per-sample ``replica`` index, replicas
   stored one after another; ``mala``/``hmc``: ``n_chains`` x ``n_per_chain``,
   chain-major; ``run_replica_exchange``: one series in iteration order; anything
   else: one series);
2. estimates the integrated autocorrelation time tau of each given series (e.g. the
   state indicators) with :func:`physsample.mcmc.integrated_autocorr_time` and takes
   the largest;
3. resamples circular blocks of length L within every chain (stratified over chains).
   For an exponentially decaying autocorrelation (AR(1)) the variance of a mean built
   from blocks of length L falls short of the true one by about (tau^2 - 1) / (2 L tau);
   L is the smallest length that keeps this below 5%, so L = 1 (i.i.d.) for tau <= 1
   and L ~ 10 tau for large tau.

Blocks within chains cannot see differences *between* chains, e.g. MD replicas stuck
in different wells (the autocorrelation is measured about each chain's own mean). So
whole chains are resampled instead (valid since chains are independent) when there are
at least 20 chains and either the shortest chain holds fewer than 10 blocks or the
chains disagree (split R-hat of a series above 1.1, :func:`physsample.mcmc.split_rhat`).
With fewer chains a warning says the interval is probably too narrow (and L is capped
at a tenth of the shortest chain).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from physsample.errors import ConfigError
from physsample.mcmc.diagnostics import integrated_autocorr_time, split_rhat

__all__ = ["BootstrapPlan", "plan_bootstrap", "chain_segments", "block_length_for"]

_DEFICIT = 0.05  # tolerated relative shortfall of the block-bootstrap variance
_MIN_BLOCKS = 10
_MIN_CHAINS_FOR_CLUSTER = 20
_MAX_RHAT = 1.1


def block_length_for(tau: float, deficit: float = _DEFICIT) -> int:
    """Smallest L with (tau^2 - 1) / (2 L tau) <= deficit (1 for tau <= 1 or NaN)."""
    if not math.isfinite(tau) or tau <= 1.0:
        return 1
    return max(1, math.ceil((tau * tau - 1.0) / (2.0 * deficit * tau)))


def chain_segments(metadata: dict[str, Any] | None, n: int) -> list[np.ndarray]:
    """Index arrays (in time order) of the independent chains of ``n`` samples.

    See the module docstring for the metadata read. Metadata that does not match ``n``
    (e.g. after subsetting) gives one chain.
    """
    md = metadata or {}
    whole = [np.arange(n)]
    if str(md.get("sampler", "")).startswith("run_replica_exchange"):
        return whole
    n_chains, n_per = md.get("n_chains"), md.get("n_per_chain")
    if isinstance(n_chains, int) and isinstance(n_per, int) and n_chains * n_per == n > 0:
        return list(np.arange(n).reshape(n_chains, n_per))
    labels = md.get("replica")
    if isinstance(labels, (list, tuple, np.ndarray)) and len(labels) == n > 0:
        labels = np.asarray(labels)
        cuts = np.flatnonzero(labels[1:] != labels[:-1]) + 1
        return np.split(np.arange(n), cuts)
    return whole


def _tau(series: np.ndarray, segments: Sequence[np.ndarray]) -> float:
    """Integrated autocorrelation time of ``series`` over equal-length chain prefixes."""
    m = min(len(s) for s in segments)
    if m < 4:
        return float("nan")
    return integrated_autocorr_time(np.stack([series[s[:m]] for s in segments]))


def _rhat(series: np.ndarray, segments: Sequence[np.ndarray]) -> float:
    """Split R-hat of ``series`` across the chains (NaN for one chain or short chains)."""
    m = min(len(s) for s in segments)
    if len(segments) < 2 or m < 4:
        return float("nan")
    return split_rhat(np.stack([series[s[:m]] for s in segments]))


@dataclass(frozen=True)
class BootstrapPlan:
    """How to draw bootstrap replicates of N samples.

    Attributes
    ----------
    kind : str
        ``"iid"``, ``"block"`` (circular blocks within chains) or ``"chains"`` (whole
        chains, truncated to the shortest).
    segments : tuple of np.ndarray
        Sample indices of each chain, in time order.
    block_length : int
        L for ``"block"``.
    tau : float or None
        The autocorrelation time L was chosen from (None if not estimated).
    """

    kind: str
    segments: tuple[np.ndarray, ...]
    block_length: int = 1
    tau: float | None = None
    n: int = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "n", int(sum(len(s) for s in self.segments)))

    def describe(self) -> dict[str, Any]:
        """JSON-ready summary for reports."""
        return {
            "kind": self.kind,
            "n_chains": len(self.segments),
            "block_length": self.block_length,
            "tau": self.tau,
        }

    def _draw(self, k: int, rng: np.random.Generator) -> np.ndarray:
        if self.kind == "iid":
            return rng.integers(0, self.n, size=(k, self.n))
        if self.kind == "chains":
            m = min(len(s) for s in self.segments)
            table = np.stack([s[:m] for s in self.segments])
            pick = rng.integers(0, len(table), size=(k, len(table)))
            return table[pick].reshape(k, -1)
        parts = []
        span = np.arange(self.block_length)
        for seg in self.segments:
            m = len(seg)
            n_blocks = math.ceil(m / self.block_length)
            starts = rng.integers(0, m, size=(k, n_blocks, 1))
            local = ((starts + span) % m).reshape(k, -1)[:, :m]
            parts.append(seg[local])
        return np.concatenate(parts, axis=1)

    def indices(
        self, n_bootstrap: int, rng: np.random.Generator, max_elems: int = 1 << 22
    ) -> Iterator[np.ndarray]:
        """Yield index arrays (k, N') of bootstrap replicates, ``n_bootstrap`` in total.

        N' is N, or n_chains x shortest chain for ``"chains"``.
        """
        if int(n_bootstrap) < 1:
            raise ConfigError(f"n_bootstrap must be at least 1, got {n_bootstrap}")
        per = max(1, max_elems // max(self.n, 1))
        done = 0
        while done < n_bootstrap:
            k = min(per, int(n_bootstrap) - done)
            yield self._draw(k, rng)
            done += k


def plan_bootstrap(
    samples: Any,
    series: Sequence[np.ndarray] = (),
    *,
    block_length: int | None = None,
) -> BootstrapPlan:
    """The bootstrap plan for ``samples`` (see the module docstring).

    Parameters
    ----------
    samples
        :class:`~physsample.Samples`; weighted ones get an i.i.d. plan.
    series
        Per-sample series (N,) whose autocorrelation sets the block length, e.g. state
        indicators or a collective variable; ignored for weighted samples.
    block_length
        Force this block length (unweighted samples only).
    """
    n = len(samples)
    if getattr(samples, "log_weights", None) is not None:
        return BootstrapPlan("iid", (np.arange(n),))
    segments = chain_segments(getattr(samples, "metadata", None), n)
    series = [np.asarray(s, dtype=np.float64) for s in series]
    tau = None
    if block_length is None:
        finite = [t for t in (_tau(s, segments) for s in series) if math.isfinite(t)]
        tau = max(finite) if finite else None
        length = block_length_for(tau if tau is not None else 1.0)
    else:
        length = int(block_length)
        if length < 1:
            raise ConfigError(f"block_length must be at least 1, got {block_length}")
    shortest = min(len(s) for s in segments)
    rhat = max((_rhat(s, segments) for s in series), default=float("nan"))
    disagree = rhat > _MAX_RHAT  # False for NaN
    too_short = length * _MIN_BLOCKS > shortest
    if (disagree or too_short) and len(segments) >= _MIN_CHAINS_FOR_CLUSTER:
        return BootstrapPlan("chains", tuple(segments), length, tau)
    if disagree:
        warnings.warn(
            f"bootstrap: the {len(segments)} chains disagree (split R-hat {rhat:.3g}); "
            "resampling within chains misses the difference between them, so the "
            "interval is probably too narrow (run more replicas or longer)",
            stacklevel=3,
        )
    if too_short:
        capped = max(1, shortest // _MIN_BLOCKS)
        warnings.warn(
            f"bootstrap: the chains ({shortest} samples in the shortest) are too short "
            f"for their autocorrelation time (tau = {tau}): block length capped at "
            f"{capped} instead of {length}; the interval is probably too narrow",
            stacklevel=3,
        )
        length = capped
    return BootstrapPlan("block", tuple(segments), length, tau)
