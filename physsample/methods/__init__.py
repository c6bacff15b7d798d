"""Diffusion samplers assembled from :mod:`physsample.diffusion`, and their training loop.

All methods share one interface (:class:`DiffusionSampler`): build with
``Method(system, **options)``, train with ``fit(steps)``, draw importance-weighted
:class:`~physsample.samples.Samples` with ``sample(n)``, estimate log Z with ``log_z(n)``,
and ``save(path)`` / ``Method.load(path)``.

- :class:`PIS`: Brownian motion from the origin (Gaussian reference).
- :class:`DDS`: stationary OU from N(0, sigma^2) (Gaussian reference).
- :class:`DIS`: variance-preserving OU with linear beta (Gaussian reference).
- :class:`LRDS`: a reference fitted to MCMC data (Gaussian mixture), corrected by training.
- :class:`GMP`: DIS with a learned Gaussian-mixture prior and horizon, refined iteratively.

Example
-------
>>> import physsample as ps                                   # doctest: +SKIP
>>> system = ps.systems.get("gmm25")                          # doctest: +SKIP
>>> sampler = ps.methods.LRDS(system, n_components=25)        # doctest: +SKIP
>>> out = sampler.fit(steps=200).sample(10_000)               # doctest: +SKIP
"""

from __future__ import annotations

from physsample.methods.base import DiffusionSampler, ResidualControl, SamplerFileError
from physsample.methods.dds import DDS
from physsample.methods.dis import DIS
from physsample.methods.gmp import GMP
from physsample.methods.lrds import LRDS
from physsample.methods.pis import PIS
from physsample.methods.training import Trainer, TrainingDivergedError

__all__ = [
    "DiffusionSampler",
    "ResidualControl",
    "SamplerFileError",
    "PIS",
    "DDS",
    "DIS",
    "LRDS",
    "GMP",
    "Trainer",
    "TrainingDivergedError",
]
