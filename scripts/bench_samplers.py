"""Benchmark PIS, DDS and LRDS (log-variance loss) on the synthetic targets of BENCHMARKS.md.

For every target, method and seed: train, draw ``--n-eval`` samples with their exact path
log-weights and report, with the definitions of ../shared/BENCHMARKS.md,

- Δlog Z = |log Z_hat - log Z|, log Z_hat = logsumexp(log w) - log N (with the 95%
  bootstrap interval of log Z_hat - log Z), and the ESS (sum w)^2 / (N sum w^2);
- EMC, the entropy of the nearest-mode histogram over log(number of modes), on the
  first 2000 *unweighted* model samples (the sampler's own coverage, as in the GMP
  paper), where the target lists its modes. Manywell-32 has 65536 modes and lists none:
  its EMC is "–" and the notes give the per-pair well occupancy instead;
- Sinkhorn (entropic OT cost, squared Euclidean ground cost, eps per target and stated
  in the table) between 2000 samples *resampled by weight* from the ``--n-eval``
  weighted model samples and 2000 exact samples; the same number for 2000 exact vs
  2000 other exact samples is printed as the floor of that eps and sample size;

beside the published numbers, with the budget, wall times (MCMC + mixture fit for LRDS,
training, sampling), energy evaluations and device of each row, and a speed table
(seconds per training iteration and per 1000 samples drawn). The metrics come from
:mod:`physsample.analysis`.

Runs go to ``--jobs`` worker processes with one torch thread each (on a machine busy
with other jobs, 2 torch threads per process are many times slower than 1). The table
is written atomically to ``--out`` with the command line at its top.

    python scripts/bench_samplers.py                    # the default budget, ~35 min
    python scripts/bench_samplers.py --targets gmm25 --methods lrds --steps 50
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import shlex
import statistics
import sys
import time
import traceback
import warnings
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import torch

import physsample as ps
from physsample import analysis
from physsample.mcmc import mala
from physsample.mcmc.reference import starting_points
from physsample.methods import DDS, LRDS, PIS
from physsample.runtime import resolve_device, write_text_atomic

METHODS = {"pis": PIS, "dds": DDS, "lrds": LRDS}
N_METRIC = 2000  # samples per side for EMC and Sinkhorn (BENCHMARKS.md)


@dataclass(frozen=True)
class Target:
    """How one target is built, sampled and compared.

    sigma: PIS diffusion scale and DDS prior standard deviation (length units).
    lrds: LRDS options (mixture size or BIC range, covariance, fit options).
    eps: Sinkhorn regularisation (squared length units).
    steps: training steps per method (LRDS gets the larger share of the time budget).
    batch_size, n_steps: trajectories per training step and time steps of the process.
    sinkhorn: (samples per side, tolerance) of the Sinkhorn solver.
    published: metric -> (value, source) from BENCHMARKS.md.
    """

    kwargs: dict[str, Any]
    sigma: float
    lrds: dict[str, Any]
    eps: float
    steps: dict[str, int]
    batch_size: int = 128
    n_steps: int = 100
    sinkhorn: tuple[int, float] = (N_METRIC, 1e-4)
    published: dict[str, tuple[float, str]] = field(default_factory=dict)


TARGETS = {
    "gmm25": Target(
        {},
        7.0,
        {"n_components": 25, "covariance": "full"},
        10.0,
        {"lrds": 150, "pis": 400, "dds": 400},
        published={"dlogz": (1.018, "log-variance method (Richter & Berner, re-run)")},
    ),
    "mw5": Target(
        {},
        2.0,
        {"n_components": 32, "covariance": "full"},
        5.0,
        {"lrds": 250, "pis": 400, "dds": 400},
        published={"sinkhorn": (0.15, "ASBS Table 2 (its eps is not in BENCHMARKS.md)")},
    ),
    "funnel": Target(
        {},
        1.0,
        {"n_components": None, "max_components": 4, "covariance": "full"},
        100.0,
        {"lrds": 1500, "pis": 600, "dds": 600},
        sinkhorn=(1000, 1e-3),
        published={
            "dlogz": (0.001, "FAB (DIS-GMP: 0.019)"),
            "ess": (0.93, "DIS-GMP"),
        },
    ),
    "manywell32": Target(
        {},
        2.0,
        {
            "reference_kind": "block_gmm",
            "block_size": 2,
            "reweight_samples": 10000,
            "n_components": None,
            "max_components": 8,
            "covariance": "full",
        },  # fmt: skip
        10.0,
        {"lrds": 200, "pis": 600, "dds": 600},
        published={"dlogz": (2.281, "log-variance method (Richter & Berner, re-run)")},
    ),
    "gmm40": Target(
        {"dim": 50},
        25.0,
        {"n_components": 40, "covariance": "diag"},
        1000.0,
        {"lrds": 100, "pis": 400, "dds": 400},
        sinkhorn=(1000, 1e-3),
    ),
    "mos": Target(
        {"dim": 50},
        6.0,
        {"n_components": 10, "covariance": "diag"},
        100.0,
        {"lrds": 800, "pis": 400, "dds": 400},
        sinkhorn=(1000, 1e-3),
    ),
}
MCMC = {"n_steps": 1000, "thin": 10}  # MALA per chain after warm-up (same again as warm-up)


def build_system(name: str):
    return ps.systems.get(name, **TARGETS[name].kwargs)


def describe_target(name: str) -> str:
    kwargs = TARGETS[name].kwargs
    return name + (f" (d={kwargs['dim']})" if "dim" in kwargs else "")


# ---------------------------------------------------------------------------- workers
def mcmc_starts(system, seed: int) -> tuple[torch.Tensor, str]:
    """MALA starting points: the system's modes, or one random well per Manywell pair."""
    modes = getattr(system, "modes", None)
    if modes is not None:
        return starting_points(system, max(64, 4 * len(modes)), seed), "modes"
    well = getattr(system, "well", None)
    if well is not None and hasattr(system, "n_pairs"):  # Manywell beyond 24 dimensions
        g = torch.Generator().manual_seed(int(seed))
        minima = torch.as_tensor(well.minima, dtype=torch.float64)
        choice = torch.randint(0, len(minima), (128, system.n_pairs), generator=g)
        x0 = torch.zeros(128, system.dim, dtype=torch.float64)
        x0[:, 0::2] = minima[choice]
        return x0, "random well per pair"
    return starting_points(system, 64, seed), "origin"


def build_sampler(method: str, system, name: str, seed: int, options: dict[str, Any]):
    """The sampler, and for LRDS the MALA + mixture-fit setup (time, evaluations, info)."""
    target = TARGETS[name]
    if method != "lrds":
        sampler = METHODS[method](system, sigma=target.sigma, seed=seed, **options)
        return sampler, {"setup_s": 0.0, "mcmc_evals": 0, "setup": f"sigma={target.sigma:g}"}
    start = time.perf_counter()
    lrds = {**target.lrds, "fit_options": {"n_init": 1}}
    mc = {"mcmc_steps": MCMC["n_steps"], "mcmc_thin": MCMC["thin"]}
    if getattr(system, "modes", None) is not None:
        # LRDS runs MALA from the modes itself and seeds the mixture fit with them
        sampler = LRDS(system, seed=seed, **mc, **lrds, **options)
        data, where = sampler.reference_samples, "the modes, modes seed EM"
        n_chains = max(64, 4 * len(system.modes))
    else:
        x0, where = mcmc_starts(system, seed)
        data = mala(system, x0, seed=seed, **MCMC)
        sampler = LRDS(system, reference=data, seed=seed, **lrds, **options)
        n_chains = len(x0)
    fit = sampler.method_settings["reference"]
    info = (
        f"MALA {n_chains} chains from {where}, {len(data)} samples; "
        f"GMM {lrds['covariance']} K={int(fit['n_components'])}"
        + ("" if lrds.get("n_components") else f" (BIC, K<={lrds['max_components']})")
    )
    evals = int(data.metadata["energy_evaluations"])
    return sampler, {"setup_s": time.perf_counter() - start, "mcmc_evals": evals, "setup": info}


def quiet_sinkhorn(x, y, name: str) -> tuple[float, bool]:
    """analysis.sinkhorn, and whether POT warned that it stopped before converging."""
    n, tol = TARGETS[name].sinkhorn
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        value = analysis.sinkhorn(x, y, TARGETS[name].eps, max_samples=n, tol=tol, seed=0)
    converged = not any("converge" in str(w.message).lower() for w in caught)
    return value, converged


def pair_occupancy(x: torch.Tensor) -> torch.Tensor:
    """Manywell: share of the samples in the right-hand well (x1 > 0) of every pair."""
    return (x[:, 0::2] > 0).double().mean(dim=0)


def exact_reference(name: str, seed: int) -> dict[str, Any]:
    """Floor values from exact samples: EMC, Sinkhorn exact vs exact, pair occupancy."""
    torch.set_num_threads(1)
    system = build_system(name)
    g = torch.Generator().manual_seed(2000 + seed)
    x, y = system.sample_exact(N_METRIC, g), system.sample_exact(N_METRIC, g)
    out: dict[str, Any] = {"target": name, "seed": seed}
    start = time.perf_counter()
    if getattr(system, "modes", None) is not None:
        out["emc"] = analysis.emc(x, system.modes)
    out["sinkhorn"], out["sinkhorn_converged"] = quiet_sinkhorn(x, y, name)
    if name.startswith("manywell"):
        big = system.sample_exact(100_000, g)
        out["occupancy"] = pair_occupancy(big).tolist()
    out["metrics_s"] = time.perf_counter() - start
    return out


def run_one(name: str, method: str, seed: int, budget: dict[str, Any]) -> dict[str, Any]:
    """Train one sampler and measure it; never raises (errors are returned)."""
    torch.set_num_threads(1)
    out: dict[str, Any] = {"target": name, "method": method, "seed": seed}
    try:
        out.update(_run_one(name, method, seed, budget))
    except Exception as err:  # a failed run is a row of the table, not a crash
        out["error"] = f"{type(err).__name__}: {err}"
        out["traceback"] = traceback.format_exc()
    return out


def run_budget(name: str, method: str, budget: dict[str, Any]) -> dict[str, int]:
    """Training steps, batch and time steps of one run: the CLI's value or the target's."""
    t = TARGETS[name]
    return {
        "steps": budget["steps"] if budget["steps"] is not None else t.steps[method],
        "batch_size": budget["batch_size"] or t.batch_size,
        "n_steps": budget["n_steps"] or t.n_steps,
    }


def _run_one(name: str, method: str, seed: int, budget: dict[str, Any]) -> dict[str, Any]:
    system = build_system(name)
    run = run_budget(name, method, budget)
    options = dict(
        n_steps=run["n_steps"],
        batch_size=run["batch_size"],
        device=budget["device"],
        progress=False,
    )
    sampler, setup = build_sampler(method, system, name, seed, options)
    start = time.perf_counter()
    sampler.fit(run["steps"])
    train_s = time.perf_counter() - start
    start = time.perf_counter()
    out = sampler.sample(budget["n_eval"], generator=1000 + seed)
    sample_s = time.perf_counter() - start
    res = {**setup, **run, "train_s": train_s, "sample_s": sample_s, "device": str(sampler.device)}
    history = sampler.trainer.history
    res["skipped"] = sum(int(row.get("skipped", 0)) for row in history)
    res["dropped"] = sum(float(row.get("n_dropped", 0.0)) for row in history)
    res["trajectories"] = sum(float(row.get("n_used", 0.0)) for row in history) + res["dropped"]
    res["train_evals"] = int(out.metadata["training_energy_evaluations"])
    res["sample_evals"] = budget["n_eval"]
    start = time.perf_counter()
    res.update(_metrics(name, system, out, seed))
    res["metrics_s"] = time.perf_counter() - start
    return res


def _metrics(name: str, system, out, seed: int) -> dict[str, Any]:
    est = analysis.log_z(out, n_bootstrap=200, seed=seed)
    res = {
        "log_z_error": est.value - system.log_z,
        "log_z_ci": (est.low - system.log_z, est.high - system.log_z),
        "ess": analysis.ess(out),
        "elbo_gap": system.log_z - analysis.elbo(out),
    }
    raw = out.x[:N_METRIC].detach().cpu()
    if getattr(system, "modes", None) is not None:
        res["emc"] = analysis.emc(raw, system.modes.cpu())
    resampled = analysis.resample_unweighted(out, N_METRIC, seed=seed).x.detach().cpu()
    g = torch.Generator().manual_seed(2000 + seed)
    exact = system.sample_exact(N_METRIC, g).cpu()
    res["sinkhorn"], res["sinkhorn_converged"] = quiet_sinkhorn(resampled, exact, name)
    if name.startswith("manywell"):
        res["occupancy"] = pair_occupancy(raw).tolist()
        res["occupancy_weighted"] = (
            ((out.x[:, 0::2] > 0).double() * out.weights()[:, None].double()).sum(0)
            / out.weights().double().sum()
        ).tolist()
    return res


# ---------------------------------------------------------------------------- report
def mean_std(values: list[float], fmt: str) -> str:
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return "–"
    if len(values) == 1:
        return format(values[0], fmt)
    return f"{format(statistics.fmean(values), fmt)} ± {format(statistics.stdev(values), fmt)}"


def verdict(ours: list[float], published: float, lower_is_better: bool = True) -> str:
    if not ours or any(math.isnan(v) for v in ours):
        return "no number"
    mean = statistics.fmean(ours)
    better = mean < published if lower_is_better else mean > published
    return "better" if better else "**worse**"


def published_cells(name: str, rows: list[dict[str, Any]]) -> tuple[str, str]:
    pub = TARGETS[name].published
    if not pub:
        return "none in BENCHMARKS.md", "–"
    cells, verdicts = [], []
    for metric, (value, source) in pub.items():
        label = {"dlogz": "Δlog Z", "ess": "ESS", "sinkhorn": "Sinkhorn"}[metric]
        cells.append(f"{label} {value:g} ({source})")
        if metric == "dlogz":
            ours = [abs(r["log_z_error"]) for r in rows]
            verdicts.append(f"Δlog Z {verdict(ours, value)}")
        elif metric == "ess":
            verdicts.append(f"ESS {verdict([r['ess'] for r in rows], value, False)}")
        else:
            verdicts.append("Sinkhorn not comparable (eps differs; see the floor row)")
    return "; ".join(cells), "; ".join(verdicts)


def group(results: list[dict[str, Any]]) -> dict[tuple[str, str], list[dict[str, Any]]]:
    out: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in results:
        out.setdefault((r["target"], r["method"]), []).append(r)
    return out


def quality_table(results, floors, targets, methods) -> list[str]:
    lines = [
        "| target | method | Δlog Z | log Z_hat − log Z [95% CI] | ESS | EMC "
        "| Sinkhorn (eps) | published (BENCHMARKS.md) | vs published |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    groups = group(results)
    for name in targets:
        for method in methods:
            rows = [r for r in groups.get((name, method), []) if "error" not in r]
            failed = [r for r in groups.get((name, method), []) if "error" in r]
            if failed and not rows:
                lines.append(
                    f"| {describe_target(name)} | {method.upper()} | failed: "
                    f"{failed[0]['error'][:120]} | | | | | | |"
                )
                continue
            dlogz = mean_std([abs(r["log_z_error"]) for r in rows], ".3f")
            signed = "; ".join(
                f"{r['log_z_error']:+.3f} [{r['log_z_ci'][0]:+.3f}, {r['log_z_ci'][1]:+.3f}]"
                for r in rows
            )
            ess = mean_std([r["ess"] for r in rows], ".3f")
            emc = mean_std([r.get("emc", math.nan) for r in rows], ".3f")
            sk = mean_std([r["sinkhorn"] for r in rows], ".3g")
            if not all(r["sinkhorn_converged"] for r in rows):
                sk += " (not converged)"
            eps = TARGETS[name].eps
            pub, vs = published_cells(name, rows)
            lines.append(
                f"| {describe_target(name)} | {method.upper()} | {dlogz} | {signed} | {ess} "
                f"| {emc} | {sk} (eps {eps:g}) | {pub} | {vs} |"
            )
        floor = [f for f in floors if f["target"] == name]
        if floor:
            emc = mean_std([f.get("emc", math.nan) for f in floor], ".3f")
            sk = mean_std([f["sinkhorn"] for f in floor], ".3g")
            lines.append(
                f"| {describe_target(name)} | exact samples | 0 | – | 1 | {emc} "
                f"| {sk} (eps {TARGETS[name].eps:g}) | (floor: exact vs exact) | |"
            )
    return lines


def cost_table(results, budget) -> list[str]:
    lines = [
        "| target | method | seeds | budget | setup | setup s | train s | sample s "
        "| energy evals (MCMC / train / sample) | skipped steps | dropped trajectories "
        "| device |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for (name, method), rows in group(results).items():
        rows = [r for r in rows if "error" not in r]
        if not rows:
            continue
        r0 = rows[0]
        b = (
            f"{r0['steps']} steps × batch {r0['batch_size']}, "
            f"{r0['n_steps']} time steps, {budget['n_eval']} samples"
        )
        dropped = sum(r["dropped"] for r in rows)
        total = sum(r["trajectories"] for r in rows)
        seeds = ",".join(str(r["seed"]) for r in rows)
        evals = (
            f"{mean_std([r['mcmc_evals'] for r in rows], '.3g')} / "
            f"{mean_std([r['train_evals'] for r in rows], '.3g')} / {budget['n_eval']}"
        )
        lines.append(
            f"| {describe_target(name)} | {method.upper()} | {seeds} | {b} | {rows[0]['setup']} "
            f"| {mean_std([r['setup_s'] for r in rows], '.1f')} "
            f"| {mean_std([r['train_s'] for r in rows], '.1f')} "
            f"| {mean_std([r['sample_s'] for r in rows], '.1f')} | {evals} "
            f"| {sum(r['skipped'] for r in rows)} | {dropped:.0f} of {total:.0f} "
            f"| {rows[0]['device']} |"
        )
    return lines


def speed_table(results, budget) -> list[str]:
    lines = [
        "| target | method | batch × time steps | s / training iteration "
        "| s / 1000 samples drawn |",
        "| --- | --- | --- | --- | --- |",
    ]
    for (name, method), rows in group(results).items():
        rows = [r for r in rows if "error" not in r]
        if not rows:
            continue
        per_it = [r["train_s"] / max(r["steps"], 1) for r in rows]
        per_k = [1000 * r["sample_s"] / budget["n_eval"] for r in rows]
        shape = f"{rows[0]['batch_size']} × {rows[0]['n_steps']}"
        lines.append(
            f"| {describe_target(name)} | {method.upper()} | {shape} | {mean_std(per_it, '.3f')} "
            f"| {mean_std(per_k, '.3f')} |"
        )
    return lines


def manywell_notes(results, floors) -> list[str]:
    lines = []
    exact = [f["occupancy"] for f in floors if "occupancy" in f]
    if not exact:
        return lines
    ex = torch.tensor(exact[0])
    lines.append(
        f"Manywell-32 per-pair well occupancy (share with x1 > 0 in each of the 16 pairs): "
        f"exact {ex.mean():.3f} (from 100k exact samples, the same in every pair up to "
        f"±{(ex - ex.mean()).abs().max():.3f}). Per method, mean over pairs of the "
        "first 2000 unweighted samples and of all weighted samples, and the largest "
        "|model − exact| over the pairs:"
    )
    lines.append("")
    for r in results:
        if "occupancy" not in r:
            continue
        raw, wt = torch.tensor(r["occupancy"]), torch.tensor(r["occupancy_weighted"])
        lines.append(
            f"- {r['method'].upper()} seed {r['seed']}: unweighted {raw.mean():.3f} "
            f"(max err {(raw - ex).abs().max():.3f}), weighted {wt.mean():.3f} "
            f"(max err {(wt - ex).abs().max():.3f})"
        )
    return lines


def target_notes(targets: list[str], budget: dict[str, Any]) -> list[str]:
    lines = []
    for name in targets:
        t = TARGETS[name]
        lrds = ", ".join(f"{k}={v}" for k, v in t.lrds.items())
        runs = {m: run_budget(name, m, budget) for m in t.steps}
        steps = ", ".join(f"{m.upper()} {r['steps']}" for m, r in runs.items())
        r0 = next(iter(runs.values()))
        n, tol = t.sinkhorn
        lines.append(
            f"- {describe_target(name)}: training steps {steps}, batch {r0['batch_size']}, "
            f"{r0['n_steps']} time steps; PIS sigma = DDS sigma = {t.sigma:g}; LRDS {lrds}, "
            f"EM n_init=1; Sinkhorn eps {t.eps:g}, {n} vs {n} samples, tol {tol:g}."
        )
    if "gmm40" in targets:
        lines.append(
            "- gmm40 is physsample's `RandomGMM`: 40 means uniform in [-40, 40]^50 from "
            "`torch.manual_seed(0)`-style float32 uniforms, as FAB's GMM, but unit "
            "variance; FAB's GMM (and the papers that reuse it) has scale_tril "
            "softplus(1) = 1.313, i.e. variance 1.725, so its modes are wider than ours."
        )
    if "mos" in targets:
        lines.append(
            "- mos: 10 equal-weight products of unit-scale Student-t (df 2), means "
            "uniform in [-10, 10]^50. BENCHMARKS.md lists no number for gmm40 or mos."
        )
    return lines


def render(args, budget, results, floors, wall_s, load) -> str:
    targets, methods = args.targets, args.methods
    header = [
        "# Diffusion samplers on the synthetic targets",
        "",
        "Written by:",
        "",
        "```",
        shlex.join(args.argv),
        "```",
        "",
        f"Device: {budget['device_name']}; torch {torch.__version__}, {platform.machine()}, "
        f"{os.cpu_count()} CPU cores, {args.jobs} worker process(es) with 1 torch thread "
        f"each. Load average {load[0]:.1f} at the start and {load[1]:.1f} at the end "
        f"(other jobs shared the machine). Total wall time {wall_s / 60:.1f} min.",
        "",
        "Budget per run (per target below): training steps, batch and time steps "
        "(exponential integrator, uniform grid); log-variance loss with the library's "
        "other defaults (chunked gradient, chunk 25, "
        "Adam lr 1e-3 with cosine decay, EMA 0.999, FourierMLP hidden 64 × 3 layers); "
        f"{budget['n_eval']} samples for log Z and ESS; seeds {args.seeds}. LRDS first runs "
        f"MALA ({MCMC['n_steps']} warm-up + {MCMC['n_steps']} steps per chain, thinned by "
        f"{MCMC['thin']}) from the system's modes (then the modes seed the EM fit; "
        "Manywell-32, whose 65536 modes are not listed: one random well per pair and "
        "chain; funnel: the origin) and fits a Gaussian mixture to it. Trajectories with "
        "non-finite or extreme log w (further from the batch median than max(1000 nats, "
        "20 × 1.4826 × MAD)) are dropped from the loss and counted in the cost table.",
        "",
        *target_notes(targets, budget),
        "",
        "Metrics (BENCHMARKS.md): Δlog Z = |logsumexp(log w) − log N − log Z| with the "
        "exact path log-weights of the discretised process; the interval is a 95% "
        "bootstrap interval (200 replicates) of log Z_hat − log Z. ESS = (Σw)²/(NΣw²). "
        "EMC on the first 2000 unweighted model samples (the sampler's own coverage). "
        "Sinkhorn: `physsample.analysis.sinkhorn` (transport cost of the entropic plan, "
        "squared Euclidean cost, so in squared length units) between 2000 samples "
        "resampled by weight from the weighted model samples and 2000 exact samples; the "
        "'exact samples' row is the same number for two independent exact sets (the "
        "floor at that eps). The eps are large because `analysis.sinkhorn` (POT, numpy, "
        "log domain) needs minutes per call on this CPU at eps ≤ 1 (and at d = 50 even at "
        "large eps with 2000 samples, hence 1000 there); the Sinkhorn numbers are "
        "therefore not comparable with the ASBS value: compare them with the floor row. "
        "Mean ± std over seeds where there are several.",
        "",
        "## Quality beside the published numbers",
        "",
        *quality_table(results, floors, targets, methods),
        "",
        *manywell_notes(results, floors),
        "",
        "## Budget, wall time and energy evaluations",
        "",
        "Setup: MALA + mixture fit (LRDS only). Energy evaluations: MALA (LRDS), "
        "training (one per trajectory per fresh batch), sampling.",
        "",
        *cost_table(results, budget),
        "",
        f"## Speed on this CPU ({budget['device_name']})",
        "",
        "Training iteration: train wall time / steps (one thread, so on a shared machine "
        "these are upper bounds). Sampling: wall time of drawing "
        f"{budget['n_eval']} samples with weights, per 1000.",
        "",
        *speed_table(results, budget),
        "",
    ]
    errors = [r for r in results if "error" in r]
    if errors:
        header += ["## Failed runs", ""]
        header += [f"- {r['target']} {r['method']} seed {r['seed']}: {r['error']}" for r in errors]
        header.append("")
    return "\n".join(header)


# ---------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--targets", nargs="+", default=list(TARGETS), choices=list(TARGETS))
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--steps", type=int, help="training steps per run (default: per target)")
    p.add_argument("--batch-size", type=int, help="trajectories per step (default: per target)")
    p.add_argument("--n-steps", type=int, help="time steps of the process (default: per target)")
    p.add_argument("--n-eval", type=int, default=10_000, help="samples for log Z and ESS")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--out", type=Path, default=Path("benchmarks/samplers.md"))
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    p.add_argument("--jobs", type=int, default=1, help="worker processes (1 thread each)")
    p.add_argument("--raw", type=Path, help="also write the raw results to this JSON file")
    p.add_argument("--from-raw", type=Path, help="render the table from a --raw file, no runs")
    args = p.parse_args(argv)
    if args.n_eval < N_METRIC:
        p.error(f"--n-eval must be at least {N_METRIC}")
    return args


def device_name(device: str) -> str:
    dev = resolve_device(device)
    if dev.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(dev)})"
    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"cpu ({model})"


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    args.argv = [Path(sys.executable).name, *sys.argv]
    budget = {
        "steps": args.steps,
        "batch_size": args.batch_size,
        "n_steps": args.n_steps,
        "n_eval": args.n_eval,
        "device": args.device,
        "device_name": device_name(args.device),
    }
    if args.from_raw:
        raw = json.loads(args.from_raw.read_text())
        args.argv = raw["argv"]  # the command that ran the benchmark
        text = render(args, budget, raw["results"], raw["floors"], raw["wall_s"], raw["load"])
        write_text_atomic(args.out, text)
        print(text)
        return
    start, load_start = time.perf_counter(), os.getloadavg()[0]
    # slowest first, so that the two workers finish together
    order = sorted(
        [(t, m, s) for t in args.targets for m in args.methods for s in args.seeds],
        key=lambda job: (job[1] != "lrds", "dim" not in TARGETS[job[0]].kwargs),
    )
    results, floors = [], []
    ctx = get_context("spawn")
    with ProcessPoolExecutor(max_workers=args.jobs, mp_context=ctx) as pool:
        futures = {pool.submit(run_one, t, m, s, budget): (t, m, s) for t, m, s in order}
        for t in args.targets:
            futures[pool.submit(exact_reference, t, args.seeds[0])] = (t, "exact", None)
        for future in as_completed(futures):
            t, m, s = futures[future]
            res = future.result()
            (floors if m == "exact" else results).append(res)
            elapsed = time.perf_counter() - start
            if "error" in res:
                print(f"[{elapsed:6.0f}s] {t} {m} seed {s}: FAILED {res['error']}", flush=True)
            elif m == "exact":
                print(
                    f"[{elapsed:6.0f}s] {t} exact floor: sinkhorn {res['sinkhorn']:.3g} "
                    f"in {res['metrics_s']:.0f}s",
                    flush=True,
                )
            else:
                print(
                    f"[{elapsed:6.0f}s] {t} {m} seed {s}: dlogZ {abs(res['log_z_error']):.3f} "
                    f"ESS {res['ess']:.3f} EMC {res.get('emc', math.nan):.3f} "
                    f"Sinkhorn {res['sinkhorn']:.3g} setup {res['setup_s']:.0f}s "
                    f"train {res['train_s']:.0f}s sample {res['sample_s']:.0f}s "
                    f"metrics {res['metrics_s']:.0f}s",
                    flush=True,
                )
    order_key = {(t, m, s): i for i, (t, m, s) in enumerate(
        (t, m, s) for t in args.targets for m in args.methods for s in args.seeds
    )}  # fmt: skip
    results.sort(key=lambda r: order_key[(r["target"], r["method"], r["seed"])])
    wall_s = time.perf_counter() - start
    load = (load_start, os.getloadavg()[0])
    if args.raw:
        raw = {"results": results, "floors": floors, "wall_s": wall_s, "load": load}
        raw["argv"] = args.argv
        write_text_atomic(args.raw, json.dumps(raw, indent=1))
    text = render(args, budget, results, floors, wall_s, load)
    write_text_atomic(args.out, text)
    print(text)


if __name__ == "__main__":
    main()
