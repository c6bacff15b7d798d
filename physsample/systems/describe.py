"""A plain-text description of a system: what the first stage of the main job prints."""

from __future__ import annotations

import math

import torch

from physsample.systems.base import ParticleSystem, System

__all__ = ["describe"]


def _energy_stats(system: System, x: torch.Tensor) -> str:
    e = system.energy(x).double()
    se = e.std().item() / math.sqrt(len(e))
    return f"mean energy {e.mean().item():.4f} +- {se:.4f} kT over {len(e)} samples"


def _openmm_check(system: ParticleSystem) -> str:
    from physsample.systems.openmm_io import openmm_energy

    x = system.default_positions()
    openmm_system, positions = system.to_openmm(x)
    e_openmm = openmm_energy(openmm_system, positions)
    e_torch = system.energy(x[None].double()).item()
    return f"energy at default positions: torch {e_torch:.6f} kT, OpenMM {e_openmm:.6f} kJ/mol"


def describe(system: System, n: int = 1000, seed: int = 0) -> str:
    """Summary lines: dimensions, log Z, exact-sample energy statistics, OpenMM check.

    Parameters
    ----------
    system
        Any system.
    n
        Number of exact samples drawn for the energy statistics (where a sampler exists).
    seed
        Seed of the exact sampler.
    """
    lines = [f"{key}: {value}" for key, value in system.summary().items()]
    if system.has_exact_sampler:
        generator = torch.Generator(device=system.device).manual_seed(seed)
        lines.append("exact samples: " + _energy_stats(system, system.sample_exact(n, generator)))
    if isinstance(system, ParticleSystem) and system.temperature is not None:
        lines.append(_openmm_check(system))
    return "\n".join(lines)
