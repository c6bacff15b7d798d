"""Sampler versus MD: independent samples per second and wall time to a free energy.

For each system (dw4, lj13, manywell32), on the same machine and in one process:

(a) **MD.** OpenMM Langevin MD (:func:`physsample.mcmc.run_md`, 4 replicas) runs for
    ``--md-seconds`` of wall time in chunks. Independent samples per second =
    N / max(tau_E, tau_CV) / MD wall time, with tau the integrated autocorrelation time
    (Sokal window, :func:`physsample.mcmc.integrated_autocorr_time`) of the energy and of
    the state-defining collective variable, in samples, pooled over replicas. MD wall time
    counts minimisation, equilibration and building the OpenMM contexts of every chunk.
    Manywell has no OpenMM counterpart in the library: this script builds one (each
    coordinate pair (x1, x2) is one particle in the plane, CustomExternalForce
    x^4 - 6 x^2 - 0.5 x + 0.5 y^2 in kJ/mol = kT), so MD is OpenMM for all three.
(b) **Sampler.** LRDS is built (its reference data: an OpenMM MD run for the particle
    systems, LRDS's own MALA otherwise, timed as part of the sampler), trained for
    ``--train-steps`` with an evaluation every ``--eval-every`` steps, each drawing
    ``--n-samples`` weighted samples. Effective samples per second = ESS x N / sampling
    wall time (Kish ESS as a fraction); the same divided by training + sampling time is
    also reported.
(c) **Time to Delta F within 0.1 kT.** Delta F = F_A - F_B between two states of the CV
    (:func:`physsample.analysis.report.default_states`: DW-4 and LJ-13: d_01 below or
    above the pair cutoff; Manywell: the wells of x[0]). Criterion, checked after every
    MD chunk and at every sampler evaluation: |Delta F_hat - Delta F_ref| < 0.1 kT *and*
    the half-width of the 95% bootstrap interval (block bootstrap for MD, i.i.d. for the
    weighted samples) < 0.1 kT. The time is the first MD wall time, or the first
    reference + training + sampling time of the sampler, at which it holds (the sampling
    time of earlier evaluations is not counted: it is measurement overhead). Reference
    answers: Manywell exact (1-D quadrature); DW-4 and LJ-13 from the long reference MD
    ``systems/<name>/reference_md.h5`` with every pair pooled (permutation invariance).

Usage::

    python scripts/bench_vs_md.py                                  # all three, default budget
    python scripts/bench_vs_md.py --systems dw4 manywell32 --md-seconds 60
    python scripts/bench_vs_md.py --option n_steps=50 --option dw4:batch_size=64

``--option key=value`` passes an LRDS option to every system, ``--option sys:key=value``
to one (e.g. to align budgets with the other benchmarks). Writes ``benchmarks/vs_md.md``
atomically, the command line on top.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import platform
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import openmm
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

import physsample as ps
from physsample.analysis import free_energy_difference
from physsample.analysis.report import default_states, pooled_pair_reference
from physsample.mcmc import integrated_autocorr_time, run_md
from physsample.methods import TrainingDivergedError
from physsample.runtime import write_text_atomic
from physsample.systems.openmm_io import positions_to_openmm

ROOT = Path(__file__).resolve().parents[1]
TOLERANCE = 0.1  # kT

SPECS: dict[str, dict[str, Any]] = {
    "dw4": {
        "md": {"timestep": 0.01, "friction": 3.0, "thin": 50, "n_equilibration": 2000},
        "md_seconds": 120.0,
        "chunk": 500,  # samples per replica per MD chunk
        "reference_md": {"n_samples": 2000, "thin": 200},  # LRDS's data
        "net": "e3nn_dw4",
        "lrds": {"reference_kind": "score", "n_steps": 100, "batch_size": 128},
        "train_steps": 40,
        "eval_every": 20,
        "n_samples": 10000,
    },
    "lj13": {
        "md": {"timestep": 0.005, "friction": 2.0, "thin": 20, "n_equilibration": 2000},
        "md_seconds": 60.0,
        "chunk": 250,
        "reference_md": {"n_samples": 2000, "thin": 100},
        "net": "e3nn_lj13",
        "lrds": {"n_steps": 32, "batch_size": 64, "lr": 3e-4},
        "train_steps": 100,
        "eval_every": 50,
        "n_samples": 5000,
    },
    "manywell32": {
        "md": {"timestep": 0.01, "friction": 1.0, "thin": 20, "n_equilibration": 1000},
        "md_seconds": 90.0,
        "chunk": 1000,
        "reference_md": None,  # LRDS runs MALA from random wells
        "net": "mlp",
        "lrds": {
            "reference_kind": "block_gmm",
            "block_size": 2,
            "reweight_samples": 10000,
            "max_components": 8,
            "n_steps": 100,
            "batch_size": 128,
        },  # fmt: skip
        "train_steps": 300,
        "eval_every": 100,
        "n_samples": 20000,
    },
}


# ------------------------------------------------------------------ OpenMM Manywell
class ManywellOpenMM:
    """Manywell as an OpenMM system: pair k of coordinates is particle k in the plane."""

    spatial_dim = 2
    temperature = None  # reduced: kT = 1 kJ/mol

    def __init__(self, system: Any, seed: int = 0) -> None:
        self.system, self.name = system, "manywell"
        self.n_particles = system.dim // 2
        self.rng = np.random.default_rng(seed)
        self.start = self.random_wells(1)[0]

    def random_wells(self, n: int) -> np.ndarray:
        """(n, dim) starts: x1 at a randomly chosen well bottom in every pair, x2 = 0."""
        x = np.zeros((n, self.n_particles, 2))
        x[..., 0] = self.rng.choice(self.system.well.minima.numpy(), size=(n, self.n_particles))
        return x.reshape(n, -1)

    def to_openmm(self, x: Any = None):
        omm = openmm.System()
        force = openmm.CustomExternalForce("x^4 - 6*x^2 - 0.5*x + 0.5*y^2")
        for i in range(self.n_particles):
            omm.addParticle(1.0)
            force.addParticle(i, [])
        omm.addForce(force)
        x = self.start if x is None else x
        return omm, positions_to_openmm(x, self.n_particles, 2)


def md_target(name: str, system: Any, seed: int) -> Any:
    return ManywellOpenMM(system, seed) if name.startswith("manywell") else system


# ------------------------------------------------------------------ statistics
def meets(estimate, reference: float) -> bool:
    value, (low, high) = estimate
    finite = all(math.isfinite(v) for v in (value, low, high))
    return finite and abs(value - reference) < TOLERANCE and (high - low) / 2 < TOLERANCE


def crossings(indicator: np.ndarray) -> int:
    """State changes summed over replicas; indicator (replicas, T) booleans."""
    return int(np.sum(indicator[:, 1:] != indicator[:, :-1]))


def reference_delta_f(name: str, system: Any, states) -> dict[str, Any]:
    if states.exact is not None:
        return {"value": float(states.exact), "ci": None, "source": "exact (quadrature)"}
    ref = ps.Samples.load(ROOT / "systems" / name / "reference_md.h5")
    out = pooled_pair_reference(states, ref, system.n_particles, system.spatial_dim)
    source = f"systems/{name}/reference_md.h5, every pair pooled ({len(ref)} samples)"
    community = ROOT / "systems" / name / "reference_community.npy"
    if community.exists():
        x = torch.from_numpy(np.load(community)).double()
        other = pooled_pair_reference(states, x, system.n_particles, system.spatial_dim)
        source += f"; community set: {other['reference']:.3f}"
    return {"value": out["reference"], "ci": out["reference_ci"], "source": source}


# ------------------------------------------------------------------ MD leg
def run_md_leg(name: str, system: Any, spec: dict, states, ref: float, seconds: float, seed: int):
    target, md = md_target(name, system, seed), spec["md"]
    n_rep, chunk = 4, int(spec["chunk"])
    xs: list[list[np.ndarray]] = [[] for _ in range(n_rep)]
    energies: list[list[np.ndarray]] = [[] for _ in range(n_rep)]
    wall, first_hit, trace, k = 0.0, None, [], 0
    x_last = target.random_wells(n_rep) if hasattr(target, "random_wells") else None
    while wall < seconds:
        start = time.perf_counter()
        out = run_md(target, n_samples=n_rep * chunk, seed=seed + 1000 * k, n_replicas=n_rep,
                     timestep=md["timestep"], friction=md["friction"], thin=md["thin"],
                     n_equilibration=md["n_equilibration"] if k == 0 else 0, x0=x_last,
                     minimize=k == 0)  # fmt: skip
        wall += time.perf_counter() - start
        x = out.x.numpy().reshape(n_rep, chunk, -1)
        e = np.asarray(out.metadata["energies"]).reshape(n_rep, chunk)
        for r in range(n_rep):
            xs[r].append(x[r])
            energies[r].append(e[r])
        x_last, k = x[:, -1], k + 1
        samples = pooled_md(xs, system)
        with warnings.catch_warnings():  # short-chain warnings: see NOTES
            warnings.simplefilter("ignore")
            est = free_energy_difference(samples, *states.masks(samples.x), n_bootstrap=300)
        trace.append((wall, len(samples), est))
        if first_hit is None and meets(est, ref):
            first_hit = wall
    return md_summary(xs, energies, states, wall, first_hit, trace)


def pooled_md(xs: list[list[np.ndarray]], system: Any) -> ps.Samples:
    per = [np.concatenate(chunks) for chunks in xs]
    replica = np.repeat(np.arange(len(per)), [len(p) for p in per])
    x = torch.from_numpy(np.concatenate(per))
    return ps.Samples(x, system=system.name, metadata={"replica": replica.tolist()})


def md_summary(xs, energies, states, wall, first_hit, trace) -> dict[str, Any]:
    e = np.stack([np.concatenate(c) for c in energies])
    x = np.stack([np.concatenate(c) for c in xs])
    cv = np.stack([states.cv(torch.from_numpy(xr)) for xr in x])
    tau_e, tau_cv = integrated_autocorr_time(e), integrated_autocorr_time(cv)
    n = e.size
    tau = max(tau_e, tau_cv)
    return {
        "n": n,
        "wall": wall,
        "tau_e": tau_e,
        "tau_cv": tau_cv,
        "crossings": crossings(cv < states.threshold),
        "rate": n / tau / wall,
        "first_hit": first_hit,
        "final": trace[-1][2],
        "trace": trace,
    }


# ------------------------------------------------------------------ sampler leg
def make_net(name: str, system: Any, seed: int) -> torch.nn.Module:
    cfg = OmegaConf.load(ROOT / "configs" / "net" / f"{SPECS[name]['net']}.yaml")
    factory = instantiate(cfg)
    torch.manual_seed(seed)
    if hasattr(system, "n_particles"):
        return factory(n_particles=system.n_particles, spatial_dim=system.spatial_dim)
    return factory(dim=system.dim)


def run_sampler_leg(name, system, spec, states, ref, options, seed) -> dict[str, Any]:
    start = time.perf_counter()
    reference = None
    if spec["reference_md"] is not None:
        md = dict(spec["md"], **spec["reference_md"])
        reference = run_md(system, seed=seed + 7, **md)
    lrds = dict(spec["lrds"], lr_schedule="constant", progress=False, device="cpu", seed=seed)
    lrds.update(options)
    sampler = ps.methods.LRDS(system, reference=reference, net=make_net(name, system, seed),
                              **lrds)  # fmt: skip
    setup = time.perf_counter() - start
    elapsed, first_hit, evals = setup, None, []
    diverged = None
    for step in range(spec["eval_every"], spec["train_steps"] + 1, spec["eval_every"]):
        t = time.perf_counter()
        try:
            sampler.fit(step)
        except TrainingDivergedError as err:  # keep the evaluations so far
            diverged = f"training diverged before step {step}: {err}"
            print(f"[{name}] {diverged}", flush=True)
            break
        elapsed += time.perf_counter() - t
        out = sampler.sample(spec["n_samples"], generator=seed + step)
        evals.append(_evaluation(step, elapsed, out, states))
        if first_hit is None and meets(evals[-1]["est"], ref):
            first_hit = elapsed + evals[-1]["t_sample"]
    if not evals:  # diverged before the first evaluation: sample the untrained sampler
        out = sampler.sample(spec["n_samples"], generator=seed)
        evals.append(_evaluation(0, elapsed, out, states))
    return {"setup": setup, "train": elapsed - setup, "first_hit": first_hit, "evals": evals,
            "options": lrds, "diverged": diverged}  # fmt: skip


def _evaluation(step: int, elapsed: float, out, states) -> dict[str, Any]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est = free_energy_difference(out, *states.masks(out.x), n_bootstrap=300)
    t_sample, ess = out.metadata["wall_time"], out.metadata["ess"]
    return {"step": step, "time": elapsed, "t_sample": t_sample, "ess": ess, "est": est,
            "eff_rate": ess * len(out) / t_sample}  # fmt: skip


# ------------------------------------------------------------------ output
def fmt_time(t: float | None, budget: float) -> str:
    return f"{t:.0f} s" if t is not None else f"not reached in {budget:.0f} s"


def fmt_est(est) -> str:
    value, (low, high) = est
    return f"{value:+.3f} [{low:+.3f}, {high:+.3f}]"


def half_width(est) -> float:
    _, (low, high) = est
    return (high - low) / 2 if math.isfinite(high - low) else math.inf


def projected(fixed: float, scaling: float, est) -> str:
    """fixed + scaling x (half-width / 0.1)^2: when the 95% half-width would reach 0.1 kT.

    The half-width of a Delta F interval shrinks like 1 / sqrt(samples), and samples grow
    linearly with the time ``scaling``; an extrapolation, valid only if the estimate is
    unbiased (the sampler's weights correct its bias; MD's does not until it has mixed).
    """
    hw = half_width(est)
    if not math.isfinite(hw):
        return "–"
    return f"~{fixed + scaling * max(hw / TOLERANCE, 1.0) ** 2:.0f} s"


def rows(results: dict[str, dict]) -> list[str]:
    head = ("| system | MD indep. samples/s | sampler eff. samples/s (sampling only) | ratio | "
            "sampler eff. samples/s incl. training | MD time to ΔF ± 0.1 kT | sampler time to "
            "ΔF ± 0.1 kT (ref. data + training + sampling) | projected MD / sampler time "
            "to a 0.1 kT half-width |")  # fmt: skip
    out = [head, "| --- | ---: | ---: | ---: | ---: | --- | --- | --- |"]
    for name, r in results.items():
        md, sm = r["md"], r["sampler"]
        last = sm["evals"][-1]
        total = sm["setup"] + sm["train"] + last["t_sample"]
        incl = last["ess"] * r["n_samples"] / total
        budget = sm["setup"] + sm["train"] + sum(e["t_sample"] for e in sm["evals"])
        rate = f"{md['rate']:.1f}"
        if md["crossings"] < 10:  # tau_CV not measurable: the rate is an upper bound
            rate = f"≤ {rate} ({md['crossings']} CV crossings)"
        out.append(
            f"| {name} | {rate} | {last['eff_rate']:.2g} | "
            f"{last['eff_rate'] / md['rate']:.2g}x | {incl:.2f} | "
            f"{fmt_time(md['first_hit'], md['wall'])} | {fmt_time(sm['first_hit'], budget)} | "
            f"{projected(0.0, md['wall'], md['final']) if md['crossings'] >= 10 else '– (unmixed)'}"
            " / "
            f"{projected(sm['setup'] + sm['train'], last['t_sample'], last['est'])} |"
        )  # fmt: skip
    return out


def details(results: dict[str, dict]) -> list[str]:
    out = ["| system | ΔF states | ΔF reference | MD: samples, τ_E, τ_CV (samples), CV crossings, "
           "wall | MD ΔF (end) | sampler: steps, ESS, ΔF per evaluation |",
           "| --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    for name, r in results.items():
        md, sm, ref = r["md"], r["sampler"], r["reference"]
        ci = "" if ref["ci"] is None else f" [{ref['ci'][0]:+.3f}, {ref['ci'][1]:+.3f}]"
        ev = "; ".join(f"{e['step']}: ESS {e['ess']:.2g}, {fmt_est(e['est'])}" for e in sm["evals"])
        out.append(
            f"| {name} | {r['states']} | {ref['value']:+.3f}{ci} ({ref['source']}) | "
            f"{md['n']}, {md['tau_e']:.1f}, {md['tau_cv']:.1f}, {md['crossings']}, "
            f"{md['wall']:.0f} s | {fmt_est(md['final'])} | {ev} |"
        )
    return out


def machine() -> str:
    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    threads = torch.get_num_threads()
    return (f"CPU ({model}), {os.cpu_count()} cores, {threads} torch thread(s), "
            f"OpenMM {openmm.__version__} (Reference platform), "
            f"torch {torch.__version__}")  # fmt: skip


def render(argv, results, wall, loads) -> str:
    lines = [
        "# Sampler versus MD",
        "",
        f"`{' '.join(['python scripts/bench_vs_md.py', *argv])}`",
        "",
        f"{machine()}; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; total wall "
        f"{wall / 60:.1f} min; load average {loads[0]:.1f} at the start, {loads[1]:.1f} at "
        "the end.",
        "",
        *rows(results),
        "",
        *details(results),
        "",
        "Budgets per system (MD: OpenMM Langevin, 4 replicas; sampler: LRDS options):",
        "",
    ]
    for name, r in results.items():
        lines.append(f"- {name}: MD {r['spec']['md']}, chunks of {r['spec']['chunk']} samples per "
                     f"replica; LRDS {r['sampler']['options']}, reference data "
                     f"{r['spec']['reference_md'] or 'LRDS MALA (default)'}, "
                     f"net {r['spec']['net']}, "
                     f"{r['spec']['train_steps']} steps, {r['n_samples']} samples per evaluation; "
                     f"reference data + setup {r['sampler']['setup']:.0f} s, training "
                     f"{r['sampler']['train']:.0f} s.")  # fmt: skip
        if r["sampler"]["diverged"]:
            lines.append(f"  - {name}: {r['sampler']['diverged']}")
    lines += ["", *NOTES]
    return "\n".join(lines) + "\n"


NOTES = [
    "Definitions (module docstring of `scripts/bench_vs_md.py`): MD independent samples/s = "
    "N / max(τ_E, τ_CV) / MD wall; sampler effective samples/s = Kish ESS × N / sampling "
    "wall; ΔF ± 0.1 kT reached when |ΔF - ref| < 0.1 kT and the 95% interval's half-width "
    "< 0.1 kT at a checkpoint (after each MD chunk, at each sampler evaluation).",
    "Projected times extrapolate the final 95% half-width h as time × (h / 0.1)^2 (MD: "
    "its whole wall time; sampler: reference data + training, plus sampling time × "
    "(h / 0.1)^2). They assume the estimate is unbiased, and ignore that the sampler could "
    "keep training.",
    "The MD intervals come from a block bootstrap within replicas; when the chains are "
    "short for their autocorrelation time, the interval is too narrow (the library warns; "
    "the warnings are silenced here), which can only make MD reach the criterion early.",
    "τ from a short MD run is a lower bound when the CV crosses between its states only a "
    "few times (column 'CV crossings'): then the MD rate is an upper bound.",
]


# ------------------------------------------------------------------ main
def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--systems", nargs="+", default=list(SPECS), choices=list(SPECS))
    p.add_argument("--md-seconds", type=float, help="MD wall time per system (default per system)")
    p.add_argument("--train-steps", type=int, help="training steps (default per system)")
    p.add_argument("--eval-every", type=int, help="steps between evaluations (default per system)")
    p.add_argument("--n-samples", type=int, help="samples per evaluation (default per system)")
    p.add_argument("--option", action="append", default=[], help="[system:]key=value for LRDS")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "vs_md.md")
    return p.parse_args(argv)


def options_for(name: str, pairs: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pair in pairs:
        scope, _, kv = pair.rpartition(":")
        key, sep, value = kv.partition("=")
        if not sep:
            raise SystemExit(f"bench_vs_md: --option needs key=value, got {pair!r}")
        if scope in ("", name):
            out[key] = _parse(value)
    return out


def _parse(value: str) -> Any:
    for cast in (int, float):
        with contextlib.suppress(ValueError):
            return cast(value)
    return {"null": None, "none": None, "true": True, "false": False}.get(value.lower(), value)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    torch.set_num_threads(1)
    start, load0, results = time.perf_counter(), os.getloadavg()[0], {}
    for name in args.systems:
        spec = dict(SPECS[name])
        for key in ("md_seconds", "train_steps", "eval_every", "n_samples"):
            if getattr(args, key) is not None:
                spec[key] = getattr(args, key)
        system = ps.systems.get(name)
        states = default_states(system)
        ref = reference_delta_f(name, system, states)
        print(f"[{name}] reference ΔF {ref['value']:+.3f} ({ref['source']})", flush=True)
        md = run_md_leg(name, system, spec, states, ref["value"], spec["md_seconds"], args.seed)
        print(f"[{name}] MD: {md['rate']:.1f} indep. samples/s, ΔF {fmt_est(md['final'])}, "
              f"first hit {md['first_hit']}", flush=True)  # fmt: skip
        opts = options_for(name, args.option)
        sm = run_sampler_leg(name, system, spec, states, ref["value"], opts, args.seed)
        last = sm["evals"][-1]
        print(f"[{name}] sampler: ESS {last['ess']:.4f}, {last['eff_rate']:.1f} eff. samples/s, "
              f"ΔF {fmt_est(last['est'])}, first hit {sm['first_hit']}", flush=True)  # fmt: skip
        results[name] = {"md": md, "sampler": sm, "reference": ref, "spec": spec,
                         "states": " vs ".join(states.names),
                         "n_samples": spec["n_samples"]}  # fmt: skip
    text = render(argv, results, time.perf_counter() - start, (load0, os.getloadavg()[0]))
    write_text_atomic(args.out, text)
    print(text)


if __name__ == "__main__":
    main()
