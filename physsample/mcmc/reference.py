"""Reference data for any system: pick a sampler, pick starting points, run it.

This is what the ``mcmc`` stage of the main job calls. Samplers that need starting
points (MALA, HMC: a required ``x0``) get them from :func:`starting_points`: the
system's known modes (the LRDS assumption), its default configuration, or the origin.
OpenMM-backed samplers (MD, replica exchange) start from the system's own positions.

Example
-------
>>> import physsample as ps
>>> system = ps.systems.get("gmm25")
>>> ref = ps.mcmc.run_reference(system, n_samples=500, seed=0)   # MALA from the 25 modes
>>> ref.x.shape  # MALA rounds up to whole chains: 64 chains x 8 samples
torch.Size([512, 2])
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable
from typing import Any

import torch

from physsample.errors import ConfigError
from physsample.samples import Samples
from physsample.systems.base import ParticleSystem, System

__all__ = ["starting_points", "run_reference", "auto_reference", "format_diagnostics"]

Sampler = Callable[..., Samples]


def starting_points(system: System, n_chains: int, seed: int = 0) -> torch.Tensor:
    """Chain starting points, shape (n_chains, dim), float64 on the system's device.

    The system's ``modes`` cycled over the chains where it has them, else random wells
    (``random_wells``, Manywell with too many modes to list), else its
    ``default_positions()`` (particle systems), else the origin; a small Gaussian
    jitter (scale 1e-3) keeps the chains from starting at identical points.
    """
    modes = getattr(system, "modes", None)
    generator = torch.Generator(device="cpu").manual_seed(int(seed))
    if modes is not None:
        base = torch.as_tensor(modes, dtype=torch.float64)
    elif hasattr(system, "random_wells"):  # too many modes to list (Manywell-32)
        base = system.random_wells(int(n_chains), generator)
    elif isinstance(system, ParticleSystem):
        base = system.default_positions().double()[None]
    else:
        base = torch.zeros(1, system.dim, dtype=torch.float64)
    base = base.to(system.device)[torch.arange(int(n_chains)) % len(base)]
    jitter = 1e-3 * torch.randn(base.shape, generator=generator, dtype=torch.float64)
    x0 = base + jitter.to(base.device)
    return system.remove_com(x0) if isinstance(system, ParticleSystem) else x0


def _needs_start(sampler: Sampler) -> bool:
    parameters = inspect.signature(sampler).parameters
    x0 = parameters.get("x0")
    return x0 is not None and x0.default is inspect.Parameter.empty


def auto_reference(
    system: System,
    n_samples: int = 2000,
    seed: int = 0,
    progress: bool = True,
    md_thin: int = 1000,
) -> Samples:
    """Reference samples with the sampler that suits ``system``.

    OpenMM Langevin MD (:func:`~physsample.mcmc.md.run_md`, its default settings but
    ``md_thin`` steps between kept samples: 1000 steps of 0.005 ps, about the
    energy autocorrelation time of DW-4, 3-13 ps depending on friction) for
    particle systems with an OpenMM counterpart; otherwise torch MALA with 64 chains
    started at :func:`starting_points`, 10 steps between kept samples and as many
    warm-up steps as sampling steps. MALA rounds ``n_samples`` up to whole chains.
    """
    from physsample.mcmc.mala import mala
    from physsample.mcmc.md import run_md

    if isinstance(system, ParticleSystem) and system.temperature is not None:
        return run_md(system, n_samples=n_samples, seed=seed, thin=md_thin, progress=progress)
    n_chains = 64
    n_steps = 10 * math.ceil(n_samples / n_chains)
    x0 = starting_points(system, n_chains, seed)
    return mala(system, x0, n_steps=n_steps, thin=10, seed=seed, progress=progress)


def run_reference(
    system: System,
    sampler: Sampler | None = None,
    *,
    n_samples: int = 2000,
    n_chains: int = 64,
    seed: int = 0,
) -> Samples:
    """Run ``sampler`` (a partial of mala, hmc, run_md or run_replica_exchange) on ``system``.

    Parameters
    ----------
    system
        Any system.
    sampler
        Called as ``sampler(system)`` or, if it needs starting points,
        ``sampler(system, x0)`` with ``x0 = starting_points(system, n_chains, seed)``.
        None runs :func:`auto_reference` with ``n_samples`` and ``seed``.
    n_samples, n_chains, seed
        Used only where the sampler does not fix them.

    Returns
    -------
    Samples
        The sampler's output, with ``metadata["sampler"]`` naming it.
    """
    if sampler is None:
        sampler = functools.partial(auto_reference, n_samples=n_samples, seed=seed)
    if not callable(sampler):
        raise ConfigError(f"mcmc sampler must be callable, got {type(sampler).__name__}")
    if _needs_start(sampler):
        samples = sampler(system, starting_points(system, n_chains, seed))
    else:
        samples = sampler(system)
    func = getattr(sampler, "func", sampler)
    samples.metadata.setdefault("sampler", getattr(func, "__name__", type(func).__name__))
    return samples


def _scalars(metadata: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    rows = []
    for key, value in metadata.items():
        if key == "settings":
            continue
        if isinstance(value, dict) and not prefix:
            rows += _scalars(value, prefix=f"{key}.")
        elif isinstance(value, (int, float, str, bool)):
            rows.append((prefix + key, value))
    return rows


def format_diagnostics(samples: Samples) -> str:
    """The scalar diagnostics in ``samples.metadata``, one ``name: value`` per line."""
    lines = [f"samples: {len(samples)} x {samples.dim}"]
    for key, value in _scalars(samples.metadata):
        lines.append(f"{key}: {value:.4g}" if isinstance(value, float) else f"{key}: {value}")
    return "\n".join(lines)
