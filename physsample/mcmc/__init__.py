"""Reference data: batched torch MALA / HMC and MCMC diagnostics.

Example
-------
>>> import physsample as ps
>>> system = ps.systems.get("gmm25")  # doctest: +SKIP
>>> ref = ps.mcmc.mala(system, system.modes, n_steps=1_000, seed=0)  # doctest: +SKIP
>>> ref.metadata["acceptance"]["mean"]  # doctest: +SKIP
"""

from __future__ import annotations

from physsample.mcmc.diagnostics import (
    effective_sample_size,
    integrated_autocorr_time,
    split_rhat,
)
from physsample.mcmc.hmc import hmc
from physsample.mcmc.mala import mala
from physsample.mcmc.md import MDError, run_md
from physsample.mcmc.replica_exchange import run_replica_exchange

__all__ = [
    "run_md",
    "run_replica_exchange",
    "MDError",
    "mala",
    "hmc",
    "integrated_autocorr_time",
    "effective_sample_size",
    "split_rhat",
]
