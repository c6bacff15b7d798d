"""Reference samples from our own OpenMM Langevin MD, compared with the community sets.

For each system (dw4, lj13, lj55) this

1. runs :func:`physsample.mcmc.run_md` for about ``--budget`` seconds of production
   (the thinning is set from a short timing run), and writes
   ``systems/<name>/reference_md.h5`` (a :class:`physsample.Samples` file, float32
   positions, settings and diagnostics in the metadata);
2. compares it with the community reference set (``systems/<name>/reference_community.npy``,
   else ``/work/shared/reference-data``), where one exists: the exact 1-D energy W2,
   ``sqrt(ot.emd2_1d(e_ours, e_ref))`` (POT returns the square), with a block-bootstrap
   standard error, beside the W2 between the community test and validation splits (the
   noise floor of two independent sets); the mean energies; and the virial mean of
   x . grad E, whose exact value is the number of centre-of-mass-free degrees of freedom,
   (N - 1) * spatial_dim. Standard errors of MD means use the integrated
   autocorrelation time of each replica's series; community sets are treated the same
   way in file order;
3. estimates the wall time a trustworthy run needs (``--target-ess`` independent
   samples of the energy) from the measured tau and cost per MD step;
4. prints a markdown table and writes it to ``systems/reference_report.md``.

Usage::

    python scripts/make_reference.py                          # all three, 120 s each
    python scripts/make_reference.py --systems dw4 lj13 --budget 60 --n-samples 5000
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import numpy as np
import ot
import torch

import physsample as ps
from physsample.mcmc.diagnostics import integrated_autocorr_time
from physsample.mcmc.md import run_md

ROOT = Path(__file__).resolve().parent.parent
SHARED = Path("/work/shared/reference-data")

#: MD settings per system (reduced units: ps, 1/ps); validated in tests/mcmc/test_md.py
#: and by the virial check below.
SETTINGS = {
    "dw4": dict(timestep=0.01, friction=3.0, n_equilibration=5_000, n_samples=10_000),
    "lj13": dict(timestep=0.005, friction=2.0, n_equilibration=5_000, n_samples=10_000),
    "lj55": dict(timestep=0.005, friction=2.0, n_equilibration=10_000, n_samples=3_000),
}
COMMUNITY = {
    "dw4": ("test_split_DW4.npy", "val_split_DW4.npy"),
    "lj13": ("test_split_LJ13-1000.npy", "val_split_LJ13-1000.npy"),
}
N_REPLICAS = 4


# -- statistics -------------------------------------------------------------------------
def chains_of(values: np.ndarray, replica: np.ndarray) -> np.ndarray:
    """Per-sample values as (replicas, T), each replica in time order."""
    n = np.bincount(replica).min()
    return np.stack([values[replica == r][:n] for r in np.unique(replica)])


def mean_se_tau(chains: np.ndarray) -> tuple[float, float, float]:
    """Mean, standard error sqrt(var * tau / N) and tau of a (chains, T) series."""
    chains = np.atleast_2d(np.asarray(chains, dtype=np.float64))
    tau = integrated_autocorr_time(chains)
    se = np.sqrt(chains.var() * max(tau, 1.0) / chains.size)
    return float(chains.mean()), float(se), float(tau)


def energy_w2(a: np.ndarray, b: np.ndarray) -> float:
    """Exact 1-D Wasserstein-2 distance between two samples (uniform weights)."""
    return float(np.sqrt(ot.emd2_1d(np.asarray(a, np.float64), np.asarray(b, np.float64))))


def block_bootstrap_w2(
    ours: np.ndarray, tau: float, ref: np.ndarray, tau_ref: float, n_boot: int = 200, seed: int = 0
) -> float:
    """Standard deviation of W2 under a block bootstrap of both sets.

    ``ours`` is (chains, T): blocks of about 2 tau consecutive samples are resampled
    within the pooled chains; ``ref`` (T,) likewise with its own tau.
    """
    rng = np.random.default_rng(seed)
    blocks_ours = _blocks(ours, tau)
    blocks_ref = _blocks(ref[None], tau_ref)
    values = [
        energy_w2(_resample(blocks_ours, rng), _resample(blocks_ref, rng)) for _ in range(n_boot)
    ]
    return float(np.std(values, ddof=1))


def _blocks(chains: np.ndarray, tau: float) -> list[np.ndarray]:
    length = max(int(np.ceil(2 * max(tau, 1.0))), 1)
    out = []
    for chain in np.atleast_2d(chains):
        n = len(chain) // length
        out.extend(chain[: n * length].reshape(n, length))
    return out


def _resample(blocks: list[np.ndarray], rng: np.random.Generator) -> np.ndarray:
    idx = rng.integers(len(blocks), size=len(blocks))
    return np.concatenate([blocks[i] for i in idx])


def virial(system, x: torch.Tensor, batch: int = 2_000) -> np.ndarray:
    """x . grad E(x) per sample (float64), in kT; translation invariant."""
    parts = []
    for chunk in x.double().split(batch):
        parts.append((chunk * -system.force(chunk)).sum(-1).numpy())
    return np.concatenate(parts)


# -- MD -------------------------------------------------------------------------------------
def calibrate(system, settings: dict, n_samples: int, budget: float) -> tuple[int, float]:
    """Thinning that makes ``n_samples`` samples cost about ``budget`` seconds.

    Two short runs of 40 samples, thinned by 10 and by 110 steps: the difference of their
    wall times is the cost of the extra MD steps alone (set-up and minimisation cancel).
    """
    walls = {}
    for thin in (10, 110):
        probe = run_md(
            system,
            40,
            seed=12345,
            n_replicas=N_REPLICAS,
            timestep=settings["timestep"],
            friction=settings["friction"],
            n_equilibration=0,
            thin=thin,
        )
        walls[thin] = probe.metadata["wall_time_s"]
    seconds_per_step = max(walls[110] - walls[10], 1e-9) / (40 * 100)
    thin = int(budget / (n_samples * seconds_per_step))
    return max(thin, 1), seconds_per_step


def analyse_file(name: str, target_ess: float) -> dict:
    """Re-analyse an existing ``systems/<name>/reference_md.h5`` without running MD."""
    path = ROOT / "systems" / name / "reference_md.h5"
    return analyse(ps.systems.get(name), ps.Samples.load(path), path, target_ess)


def make_one(name: str, n_samples: int | None, budget: float, seed: int, target_ess: float):
    system = ps.systems.get(name)
    settings = dict(SETTINGS[name])
    n = int(n_samples or settings.pop("n_samples"))
    settings.pop("n_samples", None)
    thin, seconds_per_step = calibrate(system, settings, n, budget)
    print(f"[{name}] {seconds_per_step * 1e6:.1f} us per MD step; thin = {thin}", flush=True)
    out = run_md(
        system,
        n,
        seed=seed,
        n_replicas=N_REPLICAS,
        thin=thin,
        progress=sys.stderr.isatty(),
        **settings,
    )
    meta = dict(out.metadata)
    meta["budget_s"] = budget
    meta["provenance"] = (
        "scripts/make_reference.py: physsample.mcmc.run_md (OpenMM Langevin MD), "
        f"{N_REPLICAS} replicas, on {platform.node()} ({platform.processor() or 'cpu'})"
    )
    folder = ROOT / "systems" / name
    folder.mkdir(parents=True, exist_ok=True)
    path = ps.Samples(out.x.float(), system=system, metadata=meta).save(folder / "reference_md.h5")
    row = analyse(system, out, path, target_ess)
    print(
        f"[{name}] wrote {path.relative_to(ROOT)} ({path.stat().st_size / 1e6:.1f} MB)", flush=True
    )
    return row


# -- comparison -----------------------------------------------------------------------------
def community_sets(name: str) -> tuple[np.ndarray | None, np.ndarray | None]:
    if name not in COMMUNITY:
        return None, None
    test_name, val_name = COMMUNITY[name]
    local = ROOT / "systems" / name / "reference_community.npy"
    test = local if local.exists() else SHARED / test_name
    val = SHARED / val_name
    load = lambda p: np.load(p) if p.exists() else None  # noqa: E731
    return load(test), load(val)


def analyse(system, out, path: Path, target_ess: float) -> dict:
    meta = out.metadata
    replica = np.asarray(meta["replica"])
    energies = np.asarray(meta["energies"])
    e_chains = chains_of(energies, replica)
    e_mean, e_se, tau = mean_se_tau(e_chains)
    v_mean, v_se, _ = mean_se_tau(chains_of(virial(system, out.x), replica))
    seconds_per_step = meta["wall_time_s"] / meta["n_md_steps"]
    tau_steps = tau * meta["settings"]["thin"]
    row = dict(
        system=system.name,
        n=len(out),
        thin=meta["settings"]["thin"],
        wall=meta["wall_time_s"],
        steps=meta["n_md_steps"],
        tau_ps=meta["tau_energy_ps"],
        ess=meta["ess"],
        rhat=meta["rhat"],
        e=(e_mean, e_se),
        virial=(v_mean, v_se),
        virial_exact=(system.n_particles - 1) * system.spatial_dim,
        trustworthy_hours=target_ess * tau_steps * seconds_per_step / 3600,
        us_per_step=seconds_per_step * 1e6,
        size_mb=path.stat().st_size / 1e6,
    )
    test, val = community_sets(system.name)
    if test is not None:
        row.update(compare(system, e_chains, tau, test, val))
    return row


def compare(system, e_chains, tau, test: np.ndarray, val: np.ndarray | None) -> dict:
    x_ref = torch.from_numpy(test).double()
    e_ref = system.energy(x_ref).numpy()
    ref_mean, ref_se, ref_tau = mean_se_tau(e_ref)
    v_ref, v_ref_se, _ = mean_se_tau(virial(system, x_ref))
    out = dict(
        e_ref=(ref_mean, ref_se),
        virial_ref=(v_ref, v_ref_se),
        w2=energy_w2(e_chains.ravel(), e_ref),
        w2_se=block_bootstrap_w2(e_chains, tau, e_ref, ref_tau),
    )
    if val is not None:
        out["w2_floor"] = energy_w2(system.energy(torch.from_numpy(val).double()).numpy(), e_ref)
    return out


# -- report ---------------------------------------------------------------------------------
def pm(pair, digits: int = 2) -> str:
    return "–" if pair is None else f"{pair[0]:.{digits}f} ± {pair[1]:.{digits}f}"


def fmt(value, spec: str) -> str:
    return "–" if value is None else format(value, spec)


def table(rows: list[dict]) -> str:
    head = (
        "| system | samples | thin | MD wall (s) | MD steps | µs/step | τ_E (ps) | ESS(E) | "
        "R-hat(E) | E ours | E community | energy W2 ours vs community | W2 floor "
        "(community test vs val) | virial ours | virial community | virial exact | "
        "wall for trustworthy run (h) |"
    )
    lines = [head, "|" + " --- |" * head.count(" | ") + " --- |"]
    for r in rows:
        w2 = None if "w2" not in r else f"{r['w2']:.3f} ± {r['w2_se']:.3f}"
        lines.append(
            f"| {r['system']} | {r['n']} | {r['thin']} | {r['wall']:.0f} | {r['steps']:,} | "
            f"{r['us_per_step']:.1f} | {fmt(r['tau_ps'], '.2f')} | {fmt(r['ess'], '.0f')} | "
            f"{fmt(r['rhat'], '.3f')} | {pm(r['e'])} | {pm(r.get('e_ref'))} | "
            f"{w2 or '–'} | {fmt(r.get('w2_floor'), '.3f')} | {pm(r['virial'])} | "
            f"{pm(r.get('virial_ref'))} | {r['virial_exact']} | "
            f"{r['trustworthy_hours']:.2f} |"
        )
    return "\n".join(lines)


def report(rows: list[dict], args) -> str:
    command = (
        f"scripts/make_reference.py --systems {' '.join(args.systems)} "
        f"--budget {budget_text(args.budget)}"
    )
    how = "Made by" if not args.analyse_only else "Re-analysed (MD from the saved files) by"
    notes = [
        "- Energies in kT. ± is one standard error: sqrt(var τ / N) with τ the integrated",
        "  autocorrelation time (per replica, pooled); community sets in file order.",
        "- Energy W2: exact 1-D W2, `sqrt(ot.emd2_1d(...))`; its ± is a block-bootstrap",
        "  standard deviation (blocks of 2τ). The floor is the W2 between the community test",
        "  and validation splits, i.e. what two independent sets of 10k samples give.",
        "- Virial: mean of x · ∇E; exact value (N - 1) × spatial_dim.",
        f"- Trustworthy run: wall time for ESS(E) = {args.target_ess:g} at the measured τ and",
        "  cost per step. τ_E is measured on the saved, thinned series: where it is close to",
        "  one sample spacing (thin × timestep) the samples are already nearly independent,",
        "  and τ_E and this wall time are upper bounds. Conversely, a short run can miss slow",
        "  structural transitions that the energy does not show.",
        f"- Settings: {SETTINGS} (timestep ps, friction 1/ps, equilibration in steps).",
    ]
    header = (
        f"{how} `{command}` on {time.strftime('%Y-%m-%d %H:%M')}, {platform.node()}, CPU "
        f"only (OpenMM Reference platform), {N_REPLICAS} replicas run in lockstep in one "
        "process. Budgets are seconds of production MD per system."
    )
    checks = [line for row in rows for line in z_scores(row)]
    return "\n".join(
        ["# Reference MD report", "", header, "", table(rows), "", *checks, "", *notes, ""]
    )


def z_scores(row: dict) -> list[str]:
    """One line per comparison: difference and its size in combined standard errors."""

    def z(a, b_value, b_se=0.0) -> str:
        diff, se = a[0] - b_value, float(np.hypot(a[1], b_se))
        return f"{diff:+.3f} ({abs(diff) / se:.1f} SE)"

    exact = row["virial_exact"]
    out = [f"- {row['system']}: virial ours − exact {z(row['virial'], exact)}"]
    if "e_ref" in row:
        out[0] += (
            f"; virial community − exact {z(row['virial_ref'], exact)}"
            f"; E ours − community {z(row['e'], *row['e_ref'])}"
        )
    return out


def parse_budget(text: str) -> dict[str, float]:
    """ "120" -> {"*": 120.0}; "dw4=60,lj13=200" -> {"dw4": 60.0, "lj13": 200.0}."""
    if "=" not in text:
        return {"*": float(text)}
    pairs = (item.split("=") for item in text.split(","))
    return {name.strip(): float(value) for name, value in pairs}


def budget_text(budget: dict[str, float]) -> str:
    return ",".join(f"{k}={v:g}" if k != "*" else f"{v:g}" for k, v in budget.items())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--systems", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument(
        "--n-samples", type=int, default=None, help="samples per system (default: 10000, lj55 3000)"
    )
    parser.add_argument(
        "--budget",
        type=parse_budget,
        default={"*": 120.0},
        help="seconds of production MD per system (sets the thinning): one number, or "
        "per system, e.g. dw4=60,lj13=200,lj55=200",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--target-ess",
        type=float,
        default=10_000,
        help="effective sample size that counts as trustworthy",
    )
    parser.add_argument(
        "--analyse-only",
        action="store_true",
        help="skip MD; re-analyse the existing systems/<name>/reference_md.h5 files",
    )
    args = parser.parse_args(argv)
    rows = []
    for name in args.systems:
        budget = args.budget.get(name, args.budget.get("*", 120.0))
        if args.analyse_only:
            rows.append(analyse_file(name, args.target_ess))
        else:
            rows.append(make_one(name, args.n_samples, budget, args.seed, args.target_ess))
    text = report(rows, args)
    print(text)
    (ROOT / "systems" / "reference_report.md").write_text(text)


if __name__ == "__main__":
    main()
