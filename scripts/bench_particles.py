"""Benchmark LRDS (and PIS / DDS) with e3nn controls on DW-4, LJ-13 and LJ-55.

For every system and method: train, draw ``n_gen`` samples with their exact path
log-weights, resample 2000 of them by weight, and report, with the definitions of
../shared/BENCHMARKS.md, geometric W2, energy W2 and the interatomic-distance TV
against 2000 configurations of the reference set (the community sets in
``systems/<name>/reference_community.npy`` = ../shared/reference-data/ for DW-4 and
LJ-13; for LJ-55 the held-out end of our own OpenMM MD, ``reference_md.h5``), beside
the published AS / ASBS rows. The same metrics of 2000 *unweighted* model samples, and
of 2000 MD samples (the floor at this sample size), are given too.

LRDS here uses the score-network reference (``reference_kind="score"``): a copy of the
system's e3nn control (``configs/net/e3nn_<name>.yaml``) is trained by DSM on the MD
samples, then the control is trained on top with the log-variance loss. PIS and DDS
train the same network from their Gaussian references.

Each row records its budget, wall times (DSM fit, training, sampling), energy
evaluations and device; a speed table gives the wall time of one LV training step
(rollout + forward and backward of the chunked gradient) per system size.

    python scripts/bench_particles.py                              # dw4 + lj13, CPU budget
    python scripts/bench_particles.py --systems dw4 --methods lrds pis
    python scripts/bench_particles.py --systems dw4 lj13 lj55 --budget gpu --device cuda
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import platform
import shlex
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import OmegaConf

import physsample as ps
from physsample import analysis
from physsample.methods import DDS, LRDS, PIS
from physsample.nets import E3NNControl
from physsample.runtime import resolve_device, write_text_atomic

ROOT = Path(__file__).resolve().parents[1]
N_METRIC = 2000
METHODS = {"lrds": LRDS, "pis": PIS, "dds": DDS}
# ASBS Table 2 (W2, E-W2), which reuses AS Table 1
PUBLISHED = {
    "dw4": {"AS": (0.62, 0.55), "ASBS": (0.43, 0.20)},
    "lj13": {"AS": (1.67, 2.40), "ASBS": (1.59, 1.99)},
    "lj55": {"AS": (4.04, 30.83), "ASBS": (4.00, 28.10)},
}
# Per system: MD samples for the DSM fit, LRDS reference, training and sampling budget.
# sigma is the OU's stationary std, near the data's per-coordinate std.
KEYS = ("n_ref", "sigma", "score_steps", "score_lr", "steps", "batch_size", "n_steps", "lr")
KEYS += ("n_gen", "search", "channels")


def _b(*values: Any) -> dict[str, Any]:
    return dict(zip(KEYS, values, strict=True))


BUDGETS: dict[str, dict[str, dict[str, Any]]] = {
    "cpu": {
        "dw4": _b(2000, 2.0, 5000, 3e-3, 40, 128, 100, 1e-3, 10000, "best", 16),
        "lj13": _b(2000, 1.0, 1000, 3e-3, 40, 64, 50, 1e-3, 4000, "single_pass", None),
        "lj55": _b(1000, 1.0, 50, 3e-3, 2, 16, 20, 1e-3, 2000, "single_pass", None),
    },
    "gpu": {
        "dw4": _b(8000, 2.0, 20000, 1e-3, 4000, 512, 100, 1e-3, 20000, "best", 16),
        "lj13": _b(8000, 1.0, 20000, 1e-3, 4000, 512, 100, 1e-3, 20000, "best", None),
        "lj55": _b(1000, 1.0, 20000, 1e-3, 4000, 256, 100, 1e-3, 10000, "best", None),
    },
}


def make_net(system, name: str, channels: int | None = None) -> E3NNControl:
    """The e3nn control of ``configs/net/e3nn_<name>.yaml`` (channels overridden), seeded."""
    cfg = OmegaConf.to_container(OmegaConf.load(ROOT / "configs" / "net" / f"e3nn_{name}.yaml"))
    for key in ("_target_", "_partial_"):
        cfg.pop(key)
    cfg["channels"] = channels or cfg["channels"]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return E3NNControl(n_particles=system.n_particles, spatial_dim=system.spatial_dim, **cfg)


def reference_sets(
    name: str, n_ref: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, str]:
    """(MD training data, evaluation set, MD floor set, description of the evaluation set)."""
    md = ps.Samples.load(ROOT / "systems" / name / "reference_md.h5").x.double()
    # MD frames are correlated in time: take every subset from one random permutation
    md = md[torch.randperm(len(md), generator=torch.Generator().manual_seed(1))]
    train, held_out = md[:n_ref], md[n_ref:]
    community = ROOT / "systems" / name / "reference_community.npy"
    if community.exists():
        ref = torch.from_numpy(np.load(community)).double()
        ref = ref[torch.randperm(len(ref), generator=torch.Generator().manual_seed(2))[:N_METRIC]]
        return train, ref, held_out[:N_METRIC], "community set (../shared/reference-data/)"
    if len(held_out) < N_METRIC:
        raise SystemExit(f"{name}: need {n_ref + N_METRIC} MD samples, have {len(md)}")
    floor = held_out[:-N_METRIC] if len(held_out) >= 2 * N_METRIC else None
    return train, held_out[-N_METRIC:], floor, "held-out OpenMM MD (ours)"


def metrics(system, x: torch.Tensor, ref: torch.Tensor, search: str) -> dict[str, float]:
    shape = dict(n_particles=system.n_particles, spatial_dim=system.spatial_dim)
    x = x.double()
    return {
        "w2": analysis.geometric_w2(x, ref, search=search, **shape),
        "ew2": analysis.energy_w2(system.energy(x), system.energy(ref)),
        "tv": analysis.distance_tv(x, ref, **shape),
        "de": float(system.energy(x).mean() - system.energy(ref).mean()),
    }


def build(method: str, system, name: str, data, b: dict[str, Any], device: str, seed: int):
    net = make_net(system, name, b["channels"])
    common = dict(
        net=net,
        n_steps=b["n_steps"],
        batch_size=b["batch_size"],
        lr=b["lr"],
        device=device,
        seed=seed,
        progress=False,
    )
    if method == "lrds":
        return LRDS(
            system,
            reference=data,
            reference_kind="score",
            sigma=b["sigma"],
            score_steps=b["score_steps"],
            score_lr=b["score_lr"],
            **common,
        )
    return METHODS[method](system, **common)


def run(name: str, method: str, b: dict[str, Any], device: str, seed: int) -> dict[str, Any]:
    system = ps.systems.get(name)
    load = os.getloadavg()[0]
    data, ref, md_floor, ref_desc = reference_sets(name, b["n_ref"])
    t0 = time.perf_counter()
    sampler = build(method, system, name, data, b, device, seed)
    setup_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    sampler.fit(b["steps"])
    train_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    out = sampler.sample(b["n_gen"], generator=seed + 1000).to("cpu")
    sample_s = time.perf_counter() - t0
    meta = out.metadata
    t0 = time.perf_counter()
    resampled = analysis.resample_unweighted(out, N_METRIC, seed=seed).x
    row = {
        "system": name,
        "method": method,
        "ess": meta["ess"],
        "ref_desc": ref_desc,
        "weighted": metrics(system, resampled, ref, b["search"]),
        "unweighted": metrics(system, out.x[:N_METRIC], ref, b["search"]),
        "setup_s": setup_s,
        "train_s": train_s,
        "sample_s": sample_s,
        "step_s": train_s / max(b["steps"], 1),
        "train_evals": meta["training_energy_evaluations"],
        "sample_evals": len(out),
        "dsm": sampler.method_settings.get("reference") if method == "lrds" else None,
    }
    row["metrics_s"] = time.perf_counter() - t0
    row["device"] = f"{device_name(device)}, {torch.get_num_threads()} thread(s)"
    row["load"] = f"{load:.1f} to {os.getloadavg()[0]:.1f}"
    if method == "lrds" and md_floor is not None:
        row["md_floor"] = metrics(system, md_floor, ref, b["search"])
    return row


def fmt_row(label: str, m: dict[str, float], extra: str) -> str:
    return (
        f"| {label} | {m['w2']:.3f} | {m['ew2']:.3f} | {m['tv']:.3f} | {m['de']:+.2f} | {extra} |"
    )


def command() -> str:
    return shlex.join([Path(sys.executable).name, *sys.argv])


def render(args, rows, wall_s, load, device_name) -> str:
    lines = [
        "# Particle systems: LRDS with e3nn controls beside AS / ASBS",
        "",
        "Written by:",
        "",
        "```",
        command(),
        *(f"# rows of: {cmd}" for cmd in args.merged),
        "```",
        "",
        f"This run: {device_name}; torch {torch.__version__}, {os.cpu_count()} CPU cores, "
        f"{args.threads} torch thread(s). Load average {load[0]:.1f} at the start, "
        f"{load[1]:.1f} at the end (other jobs shared the machine). Wall time "
        f"{wall_s / 60:.1f} min; seed {args.seed}; budget preset `{args.budget}`. Rows "
        "merged from earlier runs ('rows of') carry their own device, load and times.",
        "",
        "Metrics (BENCHMARKS.md): geometric W2 (Hungarian + Kabsch cost; `search` per row: "
        "`best` is exact for DW-4, `single_pass` is one Hungarian + one Kabsch as in the "
        "DEM/AS/ASBS evaluation code), energy W2 (kT), interatomic-distance TV (200 bins), "
        "2000 vs 2000. Model rows: 2000 samples *resampled by weight* (multinomial, with "
        "replacement) from the n_gen weighted samples; 'unweighted': the first 2000 raw "
        "samples. 'MD floor': 2000 held-out OpenMM MD samples vs the same evaluation set "
        "(what exact samples reach at this sample size). ΔE: mean energy minus the "
        "evaluation set's (kT).",
        "",
    ]
    for name in args.systems:
        these = [r for r in rows if r["system"] == name and "error" not in r]
        if not these:
            continue
        b = BUDGETS[args.budget][name]
        lines += [
            f"## {name}",
            "",
            f"Evaluation set: {these[0]['ref_desc']}; W2 search `{b['search']}`.",
            "",
            "| row | W2 | E-W2 | dist. TV | ΔE | notes |",
            "| --- | ---: | ---: | ---: | ---: | --- |",
        ]
        for label, (w2, ew2) in PUBLISHED[name].items():
            lines.append(f"| {label} (published, 3 seeds) | {w2} | {ew2} | – | – | ASBS Table 2 |")
        for r in these:
            lines.append(
                fmt_row(
                    f"{r['method'].upper()} (ours, resampled)",
                    r["weighted"],
                    f"ESS {r['ess']:.3f}, n_gen {b['n_gen']}",
                )
            )
            lines.append(fmt_row(f"{r['method'].upper()} (ours, unweighted)", r["unweighted"], ""))
            if "md_floor" in r:
                lines.append(fmt_row("MD floor", r["md_floor"], f"{b['n_ref']} MD for DSM"))
        lines += [
            "",
            "| method | budget | DSM fit s | train s | s / LV step | sample s | "
            "energy evals (train + sample) | device | load avg. |",
            "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- | --- |",
        ]
        for r in these:
            budget = (
                f"{b['steps']} steps × batch {b['batch_size']}, {b['n_steps']} time "
                f"steps, lr {b['lr']}, e3nn_{name}.yaml"
                + (f" with {b['channels']} channels" if b.get("channels") else "")
            )
            if r["method"] == "lrds":
                budget += (
                    f"; DSM {b['score_steps']} steps × 256 on {b['n_ref']} MD samples, "
                    f"sigma {b['sigma']}"
                )
            lines.append(
                f"| {r['method']} | {budget} | {r['setup_s']:.0f} | {r['train_s']:.0f} | "
                f"{r['step_s']:.2f} | {r['sample_s']:.0f} | "
                f"{r['train_evals']:,} + {r['sample_evals']:,} | {r.get('device', '–')} | "
                f"{r.get('load', '–')} |"
            )
        lines.append("")
    lines += [
        "## Budgets for a GPU (`--budget gpu --device cuda`), not run here",
        "",
        "| system | " + " | ".join(KEYS) + " |",
        "| --- |" + " ---: |" * len(KEYS),
        *(
            f"| {name} | " + " | ".join(str(b[key]) for key in KEYS) + " |"
            for name, b in BUDGETS["gpu"].items()
        ),
        "",
        "LJ-55 is not trained at the CPU budget: one forward + backward of its e3nn control "
        "on 512 configurations takes 3.7 s on one thread of this CPU (benchmarks/nets.md), "
        "so one LV step at batch 256 and 100 time steps is minutes.",
        "",
    ]
    errors = [r for r in rows if "error" in r]
    if errors:
        lines += ["## Failed runs", ""]
        lines += [f"- {r['system']} {r['method']}: {r['error']}" for r in errors]
        lines.append("")
    return "\n".join(lines)


def device_name(device: str) -> str:
    dev = resolve_device(device)
    if dev.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(dev)})"
    model = platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"cpu ({model})"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--systems", nargs="*", default=["dw4", "lj13"], choices=["dw4", "lj13", "lj55"])
    p.add_argument("--methods", nargs="+", default=["lrds"], choices=list(METHODS))
    p.add_argument("--budget", default="cpu", choices=list(BUDGETS))
    p.add_argument(
        "--set",
        nargs="*",
        default=[],
        metavar="SYSTEM.KEY=VALUE",
        help="override a budget entry, e.g. dw4.steps=300",
    )
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "particles.md")
    p.add_argument("--rows", type=Path, default=None, help="also write the rows as JSON")
    p.add_argument(
        "--merge", type=Path, nargs="*", default=[], help="JSON rows of earlier runs to add"
    )
    args = p.parse_args(argv)
    args.merged = []
    for item in args.set:
        key, value = item.split("=", 1)
        system, entry = key.split(".", 1)
        table = BUDGETS[args.budget][system]
        table[entry] = type(table[entry])(value) if entry in table else value
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    start, load_start = time.perf_counter(), os.getloadavg()[0]
    rows = []
    for name in args.systems:
        for method in args.methods:
            b = copy.deepcopy(BUDGETS[args.budget][name])
            try:
                row = run(name, method, b, args.device, args.seed)
            except Exception as err:  # one failed run must not lose the others
                traceback.print_exc()
                row = {"system": name, "method": method, "error": f"{type(err).__name__}: {err}"}
            rows.append(row)
            if "error" not in row:
                w, u = row["weighted"], row["unweighted"]
                print(
                    f"[{time.perf_counter() - start:6.0f}s] {name} {method}: ESS {row['ess']:.3f} "
                    f"W2 {w['w2']:.3f} E-W2 {w['ew2']:.3f} TV {w['tv']:.3f} | unweighted W2 "
                    f"{u['w2']:.3f} E-W2 {u['ew2']:.3f} | setup {row['setup_s']:.0f}s train "
                    f"{row['train_s']:.0f}s sample {row['sample_s']:.0f}s",
                    flush=True,
                )
    if args.rows:
        saved = {"rows": rows, "budget": BUDGETS[args.budget], "command": command()}
        write_text_atomic(args.rows, json.dumps(saved))
    for path in args.merge:
        saved = json.loads(path.read_text())
        args.merged.append(saved.get("command", str(path)))
        rows += saved["rows"]
        for row in saved["rows"]:
            BUDGETS[args.budget][row["system"]] = saved["budget"][row["system"]]
            if row["system"] not in args.systems:
                args.systems.append(row["system"])
    text = render(
        args,
        rows,
        time.perf_counter() - start,
        (load_start, os.getloadavg()[0]),
        device_name(args.device),
    )
    write_text_atomic(args.out, text)
    print(text)


if __name__ == "__main__":
    main()
