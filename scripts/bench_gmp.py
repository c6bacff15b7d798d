"""GMP benchmark: DIS, DIS-GP, DIS-GMP, DIS-GMP+IMR and LRDS side by side.

Targets and metrics (definitions in ../shared/BENCHMARKS.md):

- ``funnel`` (d = 10): Delta log Z, ESS, Sinkhorn;
- ``gmm40`` (d = 50) and ``mos`` (d = 50): EMC, Delta log Z, Sinkhorn;
- ``manywell32``: Delta log Z.

Methods, all with the same network, time steps, batch, optimiser and training steps:

- ``dis``: DIS, prior N(0, sigma^2);
- ``dis-gp``: GMP with one learned Gaussian (no IMR);
- ``dis-gmp``: GMP with K = 10 learned components (means drawn from N(0, sigma^2));
- ``dis-gmp-imr``: GMP from one component, one more every steps / 8 training steps;
- ``lrds``: LRDS from MALA chains started at the system's modes (or the origin).

EMC is that of the model's own samples (unweighted, as in the GMP paper); Sinkhorn
compares 2000 unweighted model samples with 2000 exact samples, with the stated eps.
The table is printed and written to ``benchmarks/gmp.md`` with the budget, the device
and the wall times (``--append`` adds a section instead). The small CPU budget of the
stored table (about 12 minutes on 2 shared cores)::

    python scripts/bench_gmp.py --steps 200 --n-steps 32 --batch-size 128 --n-eval 2000 \
        --sinkhorn-samples 1000 --sinkhorn-iter 100
    python scripts/bench_gmp.py --steps 200 --n-steps 32 --batch-size 128 --n-eval 2000 \
        --sinkhorn-samples 1000 --sinkhorn-iter 100 --targets funnel manywell32 \
        --methods dis dis-gp dis-gmp dis-gmp-imr --losses kl --append

A run that aims at the published numbers needs a GPU and the defaults (2000 steps x 256,
100 time steps) or more.
"""

from __future__ import annotations

import argparse
import datetime
import math
import platform
import sys
import time
import warnings
from pathlib import Path

import torch

import physsample as ps
from physsample.analysis import emc, sinkhorn
from physsample.methods import DIS, GMP, LRDS, TrainingDivergedError
from physsample.samples import Samples

TARGETS = {
    # name: (registry name, options, prior sigma, Sinkhorn eps, metrics)
    "funnel": ("funnel", {"dim": 10}, 1.0, 10.0, ("dlogz", "ess", "sinkhorn")),
    "gmm40": ("gmm40", {"dim": 50}, 20.0, 100.0, ("emc", "dlogz", "sinkhorn")),
    "mos": ("mos", {"dim": 50}, 5.0, 10.0, ("emc", "dlogz", "sinkhorn")),
    "manywell32": ("manywell32", {}, 1.5, 1.0, ("dlogz",)),
}
METHODS = ("dis", "dis-gp", "dis-gmp", "dis-gmp-imr", "lrds")
LABELS = {
    "dis": "DIS",
    "dis-gp": "DIS-GP",
    "dis-gmp": "DIS-GMP (K=10)",
    "dis-gmp-imr": "DIS-GMP+IMR",
    "lrds": "LRDS",
}
# Published numbers of ../shared/BENCHMARKS.md: (target, method, metric) -> text
PUBLISHED = {
    ("funnel", "dis-gmp", "dlogz"): "0.019 (GMP paper)",
    ("funnel", "dis-gmp", "ess"): "0.93 (GMP paper)",
    ("manywell32", "*", "dlogz"): "2.281 (LV, Richter & Berner)",
}


def build(method: str, system, sigma: float, args, loss: str):
    common = dict(
        n_steps=args.n_steps, batch_size=args.batch_size, lr=args.lr, loss=loss,
        device=args.device, seed=args.seed, progress=False,
    )  # fmt: skip
    if method == "dis":
        return DIS(system, sigma=sigma, **common)
    if args.prior_lr is not None and method.startswith("dis-"):
        common["prior_lr"] = args.prior_lr
    if method == "dis-gp":
        return GMP(system, sigma=sigma, n_components=1, imr=False, **common)
    if method == "dis-gmp":
        return GMP(system, sigma=sigma, n_components=10, imr=False, **common)
    if method == "dis-gmp-imr":
        every = max(args.steps // 8, 1)
        return GMP(
            system, sigma=sigma, imr=True, imr_every=every, max_components=7,
            imr_mala_steps=args.imr_mala_steps, **common,
        )  # fmt: skip
    if method == "lrds":
        n_modes = getattr(system, "modes", None)
        k = None if n_modes is None else len(n_modes)
        return LRDS(
            system, n_components=k, covariance="diag", mcmc_steps=args.lrds_mcmc_steps,
            fit_options={"n_init": 2}, **common,
        )  # fmt: skip
    raise ValueError(f"unknown method {method!r}; use {', '.join(METHODS)}")


def evaluate(target: str, system, out: Samples, eps: float, args) -> dict[str, float]:
    _, _, _, _, metrics = TARGETS[target]
    row = {"log_z": out.metadata["log_z"], "ess": out.metadata["ess"]}
    row["dlogz"] = abs(out.metadata["log_z"] - system.log_z)
    x = out.x.detach().double().cpu()
    finite = torch.isfinite(x).all(dim=1)
    if "emc" in metrics:
        row["emc"] = emc(x[finite], system.modes.cpu())
    if "sinkhorn" in metrics:
        n = args.sinkhorn_samples
        g = torch.Generator().manual_seed(args.seed)
        exact = system.sample_exact(n, generator=g).double().cpu()
        with warnings.catch_warnings():  # POT warns when max_iter ends the iterations
            warnings.simplefilter("ignore", UserWarning)
            row["sinkhorn"] = sinkhorn(
                x[finite][:n], exact, eps=eps, max_samples=n, max_iter=args.sinkhorn_iter
            )
    return row


def run_one(target: str, method: str, args, loss: str) -> dict:
    name, options, sigma, eps, _ = TARGETS[target]
    system = ps.systems.get(name, **options)
    start = time.perf_counter()
    sampler = build(method, system, sigma, args, loss)
    note = ""
    try:
        sampler.fit(args.steps)
    except TrainingDivergedError:  # still sampled: skipped steps changed nothing
        note = f"stopped at step {sampler.trainer.step} (20 non-finite steps in a row)"
    skipped = sum(row["skipped"] for row in sampler.trainer.history)
    if skipped and not note:
        note = f"{skipped} steps skipped (non-finite)"
    train_time = time.perf_counter() - start
    out = sampler.sample(args.n_eval, generator=args.seed + 1)
    row = evaluate(target, system, out, eps, args)
    row.update(target=target, method=method, loss=loss, train_s=train_time, note=note)
    row["wall_s"] = time.perf_counter() - start
    row["evals"] = out.metadata["training_energy_evaluations"]
    if isinstance(sampler, GMP):
        row["k"] = sampler.prior.n_active
        row["horizon"] = out.metadata["prior"]["horizon"]
    return row


def fmt(value, digits=3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) >= 1e3 else f"{value:.{digits}f}"
    return str(value)


def published(target: str, method: str, metrics) -> str:
    found = []
    for metric in metrics:
        text = PUBLISHED.get((target, method, metric)) or PUBLISHED.get((target, "*", metric))
        if text:
            found.append(f"{metric}: {text}")
    return "; ".join(found) or "–"


def table(rows: list[dict]) -> str:
    head = (
        "| target | method | loss | Δlog Z | ESS | EMC | Sinkhorn (eps) | K | T | "
        "train evals | wall (s) | published | note |"
    )
    lines = [head, "| " + " | ".join(["---"] * 13) + " |"]
    for r in rows:
        _, _, _, eps, metrics = TARGETS[r["target"]]
        sk = f"{fmt(r['sinkhorn'])} ({eps:g})" if "sinkhorn" in r else "–"
        lines.append(
            f"| {r['target']} | {LABELS[r['method']]} | {r['loss']} | {fmt(r['dlogz'])} | "
            f"{fmt(r['ess'])} | {fmt(r.get('emc'))} | {sk} | {fmt(r.get('k'))} | "
            f"{fmt(r.get('horizon'), 2)} | {r['evals']:.2g} | {r['wall_s']:.0f} | "
            f"{published(r['target'], r['method'], metrics)} | {r['note'] or '–'} |"
        )
    return "\n".join(lines)


def device_text(device: str) -> str:
    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", nargs="+", default=list(TARGETS), choices=list(TARGETS))
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--losses", nargs="+", default=["lv"], choices=["lv", "kl"])
    parser.add_argument("--steps", type=int, default=2000, help="training steps per run")
    parser.add_argument("--n-steps", type=int, default=100, help="time steps of the sampler")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--n-eval", type=int, default=4000, help="samples for the metrics")
    parser.add_argument("--sinkhorn-samples", type=int, default=2000, help="per set")
    parser.add_argument("--sinkhorn-iter", type=int, default=10_000, help="Sinkhorn iterations")
    parser.add_argument("--imr-mala-steps", type=int, default=50)
    parser.add_argument("--lrds-mcmc-steps", type=int, default=500)
    parser.add_argument("--prior-lr", type=float, default=None, help="GMP's (default: its own)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (small nets: 1)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/gmp.md"))
    parser.add_argument("--append", action="store_true", help="add a section to --out")
    args = parser.parse_args(argv)
    args.device = str(ps.runtime.resolve_device(args.device))
    torch.set_num_threads(args.threads)

    rows, start = [], time.perf_counter()
    for target in args.targets:
        for loss in args.losses:
            for method in args.methods:
                row = run_one(target, method, args, loss)
                rows.append(row)
                print(table([row]).splitlines()[-1], flush=True)
    total = time.perf_counter() - start
    budget = (
        f"{args.steps} training steps x batch {args.batch_size}, {args.n_steps} time steps, "
        f"lr {args.lr:g}, GMP prior_lr {args.prior_lr or 'default'}, {args.n_eval} "
        f"evaluation samples, seed {args.seed}; "
        f"IMR every {max(args.steps // 8, 1)} steps up to 7 components "
        f"({args.imr_mala_steps} + {args.imr_mala_steps} MALA steps per refinement); "
        f"Sinkhorn {args.sinkhorn_samples} vs {args.sinkhorn_samples} samples, at most "
        f"{args.sinkhorn_iter} iterations"
    )
    text = "\n".join(
        [
            "## Another run" if args.append else "# GMP benchmark",
            "",
            f"Written by `scripts/bench_gmp.py` on {datetime.date.today()}: "
            f"`python {' '.join(sys.argv)}`.",
            "",
            f"- Device: {device_text(args.device)}.",
            f"- Budget: {budget}.",
            f"- Total wall time: {total / 60:.1f} min.",
            "- Δlog Z = |log Z_hat - log Z| and ESS from the evaluation samples; EMC of the "
            "model's unweighted samples; Sinkhorn: unweighted model vs exact samples, squared "
            "Euclidean cost, eps in brackets; K: prior components at the end; T: "
            "learned horizon; train evals: target evaluations in training (MALA included).",
            "- Published numbers (../shared/BENCHMARKS.md) come from far larger budgets on GPUs.",
            "",
            table(rows),
            "",
        ]
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if args.append and args.out.exists():
        text = args.out.read_text() + "\n" + text
    args.out.write_text(text)
    print(f"\nwritten to {args.out} ({total / 60:.1f} min)")


if __name__ == "__main__":
    main()
