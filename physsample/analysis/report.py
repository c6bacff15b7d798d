"""The run report: ``report.md`` with metrics, free energies, the budget and PNG figures.

:func:`write_report` reads a sampler's weighted :class:`~physsample.Samples` (and, where
present, the run's MCMC reference and training log) and writes into ``run_dir``:

- ``report.md``: a metrics table (ESS, log Z with its bootstrap interval and the exact
  value where known; W2 metrics against a reference set for particle systems; Sinkhorn
  and EMC against exact samples for synthetic targets), a free-energy difference with
  its interval next to the reference answer, the budget (training steps, batch, wall
  times, energy evaluations) and the machine;
- ``metrics.json``: the same numbers, machine-readable;
- ``energies.png``, ``free_energy.png``, ``training.png`` (if ``train.csv`` exists),
  ``distances.png`` (particle systems), ``samples_2d.png`` (other systems).

Every file is written to a temporary name and renamed, so an interrupted report never
leaves a half-written file.

States for the free-energy difference (:func:`default_states`):

- particle systems: the distance d_01 between particles 0 and 1, "bound" (d_01 < r*)
  against "unbound", with r* the barrier of the DW-4 pair potential (d0 = 4) or, for
  Lennard-Jones clusters, 1.35 (between the first and second neighbour shells; the pair
  minimum is at 1). The reference answer uses every pair of the reference set
  (the Boltzmann distribution is invariant under relabelling the particles);
- systems with a 1-D double well in x[0] (Manywell, multi double well): the left well
  (x[0] < 0) against the right one, with the exact answer from 1-D quadrature;
- other systems with an exact sampler: x[0] < 0 against x[0] >= 0, the reference from
  200k exact samples.

Example
-------
>>> from physsample.analysis.report import write_report  # doctest: +SKIP
>>> write_report("outputs/run", system, samples, reference=mcmc_samples)  # doctest: +SKIP
"""

from __future__ import annotations

import json
import math
import os
import platform
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from physsample.analysis._util import to_numpy
from physsample.analysis.distances import all_pair_distances, distance_tv
from physsample.analysis.free_energy import free_energy_difference, free_energy_profile
from physsample.analysis.modes import emc
from physsample.analysis.plots import (
    plot_distance_histograms,
    plot_energy_histograms,
    plot_free_energy_profile,
    plot_samples_2d,
    plot_training_curves,
)
from physsample.analysis.trajectories import resample_unweighted
from physsample.analysis.wasserstein import energy_w2, geometric_w2, sinkhorn
from physsample.analysis.weights import elbo, ess, log_z
from physsample.runtime import write_text_atomic
from physsample.samples import Samples

__all__ = [
    "States",
    "default_states",
    "pooled_pair_reference",
    "reference_set",
    "write_report",
]

REPO_ROOT = Path(__file__).resolve().parents[2]
#: Sinkhorn regularisation per target (squared length units), as in scripts/bench_samplers.py.
SINKHORN_EPS = {"multi_double_well": 5.0, "gmm25": 10.0, "funnel": 10.0, "manywell": 10.0}
SINKHORN_EPS_DEFAULT = 10.0
EXACT_STATE_SAMPLES = 200_000


# -- states and reference answers ----------------------------------------------------
@dataclass
class States:
    """Two states A, B of a collective variable: A is ``cv < threshold``.

    Attributes
    ----------
    cv_name : str
        Label of the collective variable, e.g. ``"d_01"``.
    cv : callable
        Positions (N, dim) tensor -> (N,) float64 numpy values.
    threshold : float
    names : tuple of str
        Names of A and B.
    exact : float or None
        Exact Delta F = F_A - F_B in kT where known.
    all_pairs : bool
        The CV is one pair distance of a permutation-invariant particle system: the
        reference answer may pool every pair.
    """

    cv_name: str
    cv: Any
    threshold: float
    names: tuple[str, str]
    exact: float | None = None
    all_pairs: bool = False
    exact_source: str = "exact"

    def masks(self, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        values = self.cv(x)
        return values < self.threshold, values >= self.threshold


def _pair_cutoff(system: Any) -> float:
    if hasattr(system, "d0"):
        return float(system.d0)
    return 1.35


def _first_coordinate(x: torch.Tensor) -> np.ndarray:
    return to_numpy(x[:, 0])


def default_states(system: Any) -> States:
    """The states of the report's free-energy difference for ``system`` (module docstring)."""
    from physsample.systems.base import ParticleSystem

    if isinstance(system, ParticleSystem):
        n, d = system.n_particles, system.spatial_dim

        def d01(x: torch.Tensor) -> np.ndarray:
            xyz = to_numpy(x).reshape(len(x), n, d)
            return np.linalg.norm(xyz[:, 0] - xyz[:, 1], axis=1)

        r = _pair_cutoff(system)
        return States("d_01", d01, r, (f"d_01 < {r:g}", f"d_01 >= {r:g}"), all_pairs=True)
    well = getattr(system, "well", None)
    exact, source = None, "exact (1-D quadrature)"
    if well is not None and hasattr(well, "_log_integral"):
        exact = -(well._log_integral(well.lower, 0.0) - well._log_integral(0.0, well.upper))
    elif system.has_exact_sampler:
        generator = torch.Generator(device=system.device).manual_seed(12345)
        x0 = _first_coordinate(system.sample_exact(EXACT_STATE_SAMPLES, generator))
        exact = float(-np.log(np.mean(x0 < 0) / np.mean(x0 >= 0)))
        source = f"{EXACT_STATE_SAMPLES} exact samples"
    names = ("x[0] < 0", "x[0] >= 0")
    return States("x[0]", _first_coordinate, 0.0, names, exact, exact_source=source)


def reference_set(system: Any, run_reference: Samples | None = None) -> tuple[Samples | None, str]:
    """Reference configurations for the metrics and their description.

    The community set ``systems/<name>/reference_community.npy`` where present (centre
    of mass removed), else ``run_reference`` (the run's MCMC), else None.
    """
    path = REPO_ROOT / "systems" / str(system.name) / "reference_community.npy"
    if path.exists():
        x = torch.from_numpy(np.load(path)).double()
        if hasattr(system, "remove_com"):
            x = system.remove_com(x)
        return Samples(x, system=system.name), f"community set `systems/{system.name}/{path.name}`"
    if run_reference is not None:
        sampler = run_reference.metadata.get("sampler", "MCMC")
        return run_reference, f"this run's reference samples (`reference.h5`, {sampler})"
    return None, "none"


# -- metrics -----------------------------------------------------------------------
def _energies(system: Any, x: torch.Tensor, chunk: int = 8192) -> np.ndarray:
    with torch.no_grad():
        parts = [system.energy(x[i : i + chunk].to(system.device)) for i in range(0, len(x), chunk)]
    return to_numpy(torch.cat(parts))


def _finite(e: np.ndarray) -> np.ndarray:
    return e[np.isfinite(e)]


def _weight_metrics(system: Any, samples: Samples) -> dict[str, Any]:
    out: dict[str, Any] = {"n_samples": len(samples), "ess": ess(samples)}
    if samples.log_weights is None:
        return out
    est = log_z(samples)
    out.update(log_z=est.value, log_z_ci=list(est.ci), elbo=elbo(samples))
    if system.log_z is not None:
        out.update(log_z_exact=float(system.log_z), delta_log_z=abs(est.value - system.log_z))
    return out


def _particle_metrics(system, model: Samples, ref: Samples, n_eval: int, seed: int) -> dict:
    n, d = system.n_particles, system.spatial_dim
    ref_x = ref.x[torch.randperm(len(ref), generator=torch.Generator().manual_seed(seed))[:n_eval]]
    raw = model.x[:n_eval]
    search = "best" if n <= 4 else "single_pass"
    e_ref = _energies(system, ref_x)
    out = {"geometric_w2": geometric_w2(raw, ref_x, n, d, max_samples=n_eval, search=search)}
    out["geometric_w2_search"] = search
    out["energy_w2"] = energy_w2(_finite(_energies(system, raw)), e_ref)
    out["distance_tv"] = distance_tv(raw, ref_x, n, d)
    if model.log_weights is not None:
        rw = resample_unweighted(model, n_eval, seed).x
        if search == "best":  # exact and quick for <= 4 particles
            out["geometric_w2_reweighted"] = geometric_w2(
                rw, ref_x, n, d, max_samples=n_eval, search=search
            )
        out["energy_w2_reweighted"] = energy_w2(_finite(_energies(system, rw)), e_ref)
        out["distance_tv_reweighted"] = distance_tv(rw, ref_x, n, d)
    return out


def _synthetic_metrics(system, model: Samples, n_eval: int, seed: int) -> dict:
    out: dict[str, Any] = {}
    if system.has_exact_sampler:
        exact = system.sample_exact(n_eval, torch.Generator(device=system.device).manual_seed(seed))
        x = model.x[:n_eval].double()
        eps = SINKHORN_EPS.get(str(system.name), SINKHORN_EPS_DEFAULT)
        with warnings.catch_warnings():  # non-convergence is reported in the table instead
            warnings.simplefilter("ignore")
            value = sinkhorn(x, exact, eps, max_iter=2000, tol=1e-4)
        out.update(sinkhorn=value, sinkhorn_eps=eps)
    modes = getattr(system, "modes", None)
    if modes is not None and len(modes) >= 2:
        out["emc"] = emc(model.x, modes)
        if model.log_weights is not None:
            out["emc_reweighted"] = emc(model.x, modes, model.weights())
    return out


def _free_energy(system, states: States, samples: Samples, reference, seed: int) -> dict:
    n_particles, spatial_dim = getattr(system, "n_particles", 0), getattr(system, "spatial_dim", 0)
    a, b = states.masks(samples.x)
    est = free_energy_difference(samples, a, b, seed=seed)
    out = {"states": list(states.names), "delta_f": est.value, "delta_f_ci": list(est.ci)}
    if states.exact is not None:
        out.update(reference=float(states.exact), reference_source=states.exact_source)
    elif reference is not None and states.all_pairs:
        out.update(pooled_pair_reference(states, reference, n_particles, spatial_dim, seed))
    return out


def pooled_pair_reference(
    states: States, reference: Any, n_particles: int, spatial_dim: int, seed: int = 0
) -> dict[str, Any]:
    """Delta F of a pair-distance state from every pair of a reference set.

    The Boltzmann distribution is invariant under relabelling identical particles, so
    every pair distance is a sample of d_01: P_A is the fraction of all pair distances
    below the threshold. The 95% interval resamples configurations i.i.d. (too narrow
    for correlated MCMC output).
    """
    dist = all_pair_distances(reference, n_particles, spatial_dim)
    short = (dist < states.threshold).reshape(len(getattr(reference, "x", reference)), -1).mean(1)
    rng = np.random.default_rng(seed)
    reps = short[rng.integers(0, len(short), size=(1000, len(short)))].mean(axis=1)
    p = short.mean()
    with np.errstate(divide="ignore"):
        value = float(-np.log(p / (1.0 - p)))
        ci = np.quantile(-np.log(reps / (1.0 - reps)), [0.025, 0.975])
    return {
        "reference": value,
        "reference_ci": [float(ci[0]), float(ci[1])],
        "reference_source": "reference set, every pair pooled, i.i.d. bootstrap",
    }


# -- figures -----------------------------------------------------------------------
def _figures(run_dir, system, samples, reference, states, train_csv, n_eval) -> list[Path]:
    name, m = system.name, 5 * n_eval
    e_ref = None if reference is None else _energies(system, reference.x[:m])
    paths = [
        plot_energy_histograms(run_dir / "energies.png", _energies(system, samples.x), e_ref,
                               samples.log_weights, title=f"{name}: energies"),
        _profile_figure(run_dir / "free_energy.png", states, samples, reference),
    ]  # fmt: skip
    if train_csv is not None and Path(train_csv).exists():
        paths.append(plot_training_curves(run_dir / "training.png", train_csv))
    lw = None if samples.log_weights is None else samples.log_weights[:m]
    if hasattr(system, "n_particles") and reference is not None:
        paths.append(plot_distance_histograms(
            run_dir / "distances.png", samples.x[:m], reference.x[:m], system.n_particles,
            system.spatial_dim, lw, title=f"{name}: distances",
        ))  # fmt: skip
    elif not hasattr(system, "n_particles"):
        w = None if lw is None else torch.softmax(lw, 0)
        title = f"{name}: samples (opacity = weight)"
        path = run_dir / "samples_2d.png"
        paths.append(plot_samples_2d(path, samples.x[:m], system, weights=w, title=title))
    return paths


def _profile_figure(path, states, samples, reference) -> Path:
    values = states.cv(samples.x)
    sets = [(samples, values, "sampler (reweighted)")]
    if reference is not None:
        sets.append((reference, states.cv(reference.x), "reference"))
    span = sets[-1][1]  # the reference's range where there is one (a poor sampler strays)
    lo, hi = float(np.quantile(span, 0.001)), float(np.quantile(span, 0.999))
    profiles = [free_energy_profile(s, v, 40, range=(lo, hi), n_bootstrap=100) for s, v, _ in sets]
    return plot_free_energy_profile(path, profiles, [label for *_, label in sets],
                                    xlabel=states.cv_name, title="free-energy profile")  # fmt: skip


# -- text ----------------------------------------------------------------------------
def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "–"
    if isinstance(value, (float, np.floating)):
        return f"{value:.{digits}g}" if math.isfinite(value) else str(value)
    return str(value)


def _metric_rows(m: dict[str, Any], ref_desc: str) -> list[str]:
    rows = [f"| samples | {m['n_samples']} | |", f"| ESS (fraction) | {_fmt(m['ess'])} | Kish |"]
    if "log_z" in m:
        lo, hi = m["log_z_ci"]
        rows.append(f"| log Z | {_fmt(m['log_z'])} [{_fmt(lo)}, {_fmt(hi)}] | 95% bootstrap |")
        rows.append(f"| ELBO | {_fmt(m['elbo'])} | mean log w |")
    if "log_z_exact" in m:
        rows.append(f"| log Z exact | {_fmt(m['log_z_exact'])} | |")
        rows.append(f"| Δlog Z | {_fmt(m['delta_log_z'])} | \\|log Z_hat - log Z\\| |")
    notes = {
        "geometric_w2": f"raw samples vs {ref_desc}, search={m.get('geometric_w2_search')}",
        "geometric_w2_reweighted": "resampled by weight",
        "energy_w2": "raw samples, kT",
        "energy_w2_reweighted": "resampled by weight, kT",
        "distance_tv": "raw samples, 200 bins",
        "distance_tv_reweighted": "resampled by weight",
        "sinkhorn": f"vs exact samples, eps = {m.get('sinkhorn_eps')}",
        "emc": "raw samples",
        "emc_reweighted": "weighted",
    }
    rows += [f"| {key} | {_fmt(m[key])} | {note} |" for key, note in notes.items() if key in m]
    return ["| metric | value | note |", "| --- | --- | --- |", *rows]


def _budget_rows(samples: Samples, reference: Samples | None) -> list[str]:
    md, s = samples.metadata, samples.metadata.get("settings", {})
    rows = [
        ("method", md.get("method")),
        ("training steps", md.get("training_steps")),
        ("batch size", s.get("batch_size")),
        ("time steps of the process", md.get("n_steps")),
        ("training wall time (s)", md.get("training_wall_time")),
        ("training energy evaluations", md.get("training_energy_evaluations")),
        ("sampling wall time (s)", md.get("wall_time")),
        ("sampling energy evaluations", md.get("energy_evaluations")),
        ("device (setting)", s.get("device")),
    ]
    if reference is not None:
        rmd = reference.metadata
        rows += [
            ("reference sampler", rmd.get("sampler")),
            ("reference samples", len(reference)),
            ("reference wall time (s)", rmd.get("wall_time_s", rmd.get("wall_time"))),
            (
                "reference energy evaluations",
                rmd.get("n_energy_evaluations", rmd.get("energy_evaluations")),
            ),
        ]
    return ["| item | value |", "| --- | --- |", *(f"| {k} | {_fmt(v)} |" for k, v in rows)]


def _machine() -> str:
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (
        f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"{torch.get_num_threads()} torch threads, load average {load:.1f} when the report "
        "was written"
    )


def _free_energy_lines(fe: dict[str, Any]) -> list[str]:
    lo, hi = fe["delta_f_ci"]
    a, b = fe["states"]
    lines = [f"ΔF = F({a}) - F({b}) = **{_fmt(fe['delta_f'])} kT** "
             f"[{_fmt(lo)}, {_fmt(hi)}] (95% bootstrap) from the reweighted samples."]  # fmt: skip
    if "reference" in fe:
        ci = fe.get("reference_ci")
        ci_text = f" [{_fmt(ci[0])}, {_fmt(ci[1])}]" if ci else ""
        lines.append(f"Reference: {_fmt(fe['reference'])} kT{ci_text} ({fe['reference_source']}); "
                     f"difference {_fmt(fe['delta_f'] - fe['reference'])} kT.")  # fmt: skip
    return lines


def _render(system, metrics, fe, ref_desc, samples, reference, figures, run_dir) -> str:
    config = run_dir / ".hydra" / "config.yaml"
    lines = [f"# physsample run report: {system.name}", ""]
    if config.exists():
        lines += ["Composed config: `.hydra/config.yaml` (overrides: `.hydra/overrides.yaml`).", ""]
    lines += ["## Metrics", "", *_metric_rows(metrics, ref_desc), ""]
    lines += ["## Free energy", "", *_free_energy_lines(fe), ""]
    lines += ["## Budget", "", *_budget_rows(samples, reference), ""]
    lines += ["## Machine", "", _machine(), ""]
    lines += ["## Figures", ""]
    lines += [f"![{p.stem}]({p.name})" for p in figures]
    lines += ["", "The report is regenerated each time the report stage runs (it is cheap)."]
    return "\n".join(lines) + "\n"


def write_report(
    run_dir: str | os.PathLike,
    system: Any,
    samples: Samples,
    reference: Samples | None = None,
    *,
    train_csv: str | os.PathLike | None = None,
    n_eval: int = 2000,
    seed: int = 0,
) -> dict[str, Any]:
    """Write ``report.md``, ``metrics.json`` and the PNG figures into ``run_dir``.

    Parameters
    ----------
    run_dir
        Folder to write to (created if needed).
    system
        The target system.
    samples
        The sampler's output (weighted :class:`~physsample.Samples`).
    reference
        The run's MCMC reference samples, if any: used for particle systems without a
        community reference set, and drawn in the figures.
    train_csv
        The training log; default ``run_dir/train.csv`` if it exists.
    n_eval
        Samples per set for the W2, TV and Sinkhorn metrics (2000 in BENCHMARKS.md).
    seed
        Seed of the subsampling and the bootstraps.

    Returns
    -------
    dict
        The numbers of ``metrics.json``: ``metrics``, ``free_energy``, ``figures``.
    """
    run_dir = Path(run_dir)
    train_csv = run_dir / "train.csv" if train_csv is None else Path(train_csv)
    metrics = _weight_metrics(system, samples)
    ref, ref_desc = reference_set(system, reference)
    if hasattr(system, "n_particles") and ref is not None:
        metrics.update(_particle_metrics(system, samples, ref, int(n_eval), seed))
    elif not hasattr(system, "n_particles"):
        metrics.update(_synthetic_metrics(system, samples, int(n_eval), seed))
    states = default_states(system)
    fe = _free_energy(system, states, samples, ref, seed)
    plot_ref, plot_desc = ref, ref_desc
    if not hasattr(system, "n_particles") and system.has_exact_sampler:
        generator = torch.Generator(device=system.device).manual_seed(seed + 1)
        plot_ref = Samples(system.sample_exact(5 * int(n_eval), generator), system=system.name)
        plot_desc = f"{5 * int(n_eval)} exact samples"
    figures = _figures(run_dir, system, samples, plot_ref, states, train_csv, int(n_eval))
    text = _render(system, metrics, fe, ref_desc, samples, reference, figures, run_dir)
    text += f"\n'reference' in the figures: {plot_desc}.\n"
    out = {"metrics": metrics, "free_energy": fe, "figures": [p.name for p in figures]}
    write_text_atomic(run_dir / "metrics.json", json.dumps(out, indent=1, default=float) + "\n")
    write_text_atomic(run_dir / "report.md", text)
    return out
