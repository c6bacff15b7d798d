"""Peak memory of one log-variance training step: 100 vs 400 time steps, chunked vs one graph.

The LV gradient needs only the states of the trajectories: with ``chunk`` set, the
log-weights are computed without a graph and the backward pass recomputes the
control-dependent terms ``chunk`` steps at a time; with ``chunk=None`` one autograd graph
spans every step, so its memory grows with the number of steps.

Every configuration runs in its own fresh Python process, which builds the sampler and
then makes ONE training step (``fit(1)``: rollout without a graph, log-weights,
gradient, Adam update). On the CPU the step's peak is the rise of the process's peak
resident set size (``resource.getrusage(RUSAGE_SELF).ru_maxrss``) over its value just
before the step (torch's CPU allocations bypass ``tracemalloc``, but not the RSS); on
CUDA it is ``torch.cuda.max_memory_allocated`` minus the memory allocated before the
step. The table also gives the size of the stored states alone, batch x (N + 1) x dim
x 4 bytes (float32). Writes ``--out`` (default benchmarks/memory.md) atomically.

    python scripts/bench_memory.py                      # DIS on manywell32, batch 512
    python scripts/bench_memory.py --device cuda --batch-size 2048
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shlex
import subprocess
import sys
import time
from pathlib import Path

import torch

from physsample.runtime import write_text_atomic

MIB = 2.0**20


def worker(config: dict) -> dict:
    """One configuration, in this (fresh) process: memory and time of one training step."""
    import physsample as ps
    from physsample.methods import DDS, DIS, PIS

    torch.set_num_threads(int(config["threads"]))
    methods = {"dis": DIS, "dds": DDS, "pis": PIS}
    system = ps.systems.get(config["target"])
    sampler = methods[config["method"]](
        system,
        n_steps=config["n_steps"],
        batch_size=config["batch_size"],
        chunk=config["chunk"],
        device=config["device"],
        progress=False,
        ema_decay=None,
    )
    cuda = sampler.device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024.0  # KiB on Linux
    start = time.perf_counter()
    sampler.fit(1)
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    if cuda:
        peak = torch.cuda.max_memory_allocated() - before
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024.0 - before
    states = config["batch_size"] * (config["n_steps"] + 1) * system.dim * 4
    return {
        **config,
        "dim": system.dim,
        "baseline_mib": before / MIB,
        "peak_mib": peak / MIB,
        "states_mib": states / MIB,
        "seconds": seconds,
        "device_used": str(sampler.device),
        "device_name": torch.cuda.get_device_name(sampler.device) if cuda else cpu_name(),
    }


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def run_in_subprocess(config: dict) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(config)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"worker failed for {config}:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def render(args, rows: list[dict], wall_s: float) -> str:
    first = rows[0]
    measure = (
        "torch.cuda.max_memory_allocated minus the allocation before the step"
        if first["device_used"].startswith("cuda")
        else "rise of the peak RSS (getrusage ru_maxrss) over its value before the step"
    )
    lines = [
        "# Peak memory of one log-variance training step",
        "",
        "Written by:",
        "",
        "```",
        shlex.join([Path(sys.executable).name, *sys.argv]),
        "```",
        "",
        f"{first['method'].upper()} on {first['target']} (dim {first['dim']}), batch "
        f"{first['batch_size']}, FourierMLP hidden 64 × 3 layers, float32, exponential "
        f"integrator; one `fit(1)` step per fresh process. Device: {first['device_used']} "
        f"({first['device_name']}), torch {torch.__version__}, {first['threads']} torch "
        f"thread(s). Peak: {measure}. Each configuration measured {args.repeats} time(s) "
        f"in separate processes (min and max shown when more than one). "
        f"Load average {os.getloadavg()[0]:.1f}; total wall time {wall_s:.0f} s.",
        "",
        "| time steps | LV gradient | peak memory of the step (MiB) | stored states (MiB) "
        "| process before the step (MiB) | step wall time (s) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    keyed: dict[tuple, list[dict]] = {}
    for r in rows:
        keyed.setdefault((r["n_steps"], r["chunk"]), []).append(r)
    for (n_steps, chunk), group in keyed.items():
        peaks = sorted(r["peak_mib"] for r in group)
        peak = f"{peaks[0]:.1f}" if len(peaks) == 1 else f"{peaks[0]:.1f} – {peaks[-1]:.1f}"
        grad = "one graph (chunk=None)" if chunk is None else f"chunked (chunk={chunk})"
        lines.append(
            f"| {n_steps} | {grad} | {peak} | {group[0]['states_mib']:.1f} "
            f"| {min(r['baseline_mib'] for r in group):.0f} "
            f"| {min(r['seconds'] for r in group):.2f} |"
        )
    lines += ["", *ratio_lines(keyed), ""]
    return "\n".join(lines)


def ratio_lines(keyed: dict[tuple, list[dict]]) -> list[str]:
    """Growth from the fewest to the most time steps, per gradient mode, beside the states."""
    out = []
    chunks = sorted({c for _, c in keyed}, key=lambda c: (c is None, c or 0))
    for chunk in chunks:
        sizes = sorted(n for n, c in keyed if c == chunk)
        if len(sizes) < 2:
            continue
        lo = min(r["peak_mib"] for r in keyed[(sizes[0], chunk)])
        hi = min(r["peak_mib"] for r in keyed[(sizes[-1], chunk)])
        states = (
            keyed[(sizes[-1], chunk)][0]["states_mib"] - keyed[(sizes[0], chunk)][0]["states_mib"]
        )
        grad = "one graph" if chunk is None else f"chunked (chunk={chunk})"
        ratio = f" (× {hi / lo:.2f})" if lo > 0 else ""
        out.append(
            f"- {grad}: {sizes[0]} → {sizes[-1]} time steps, peak {lo:.1f} → {hi:.1f} MiB"
            f"{ratio}: +{hi - lo:.1f} MiB, {(hi - lo) / states:.1f} × the growth of the "
            f"stored states (+{states:.1f} MiB)"
        )
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--target", default="manywell32")
    p.add_argument("--method", default="dis", choices=["dis", "dds", "pis"])
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--n-steps", type=int, nargs="+", default=[100, 400])
    p.add_argument("--chunk", type=int, default=25, help="chunk of the chunked gradient")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    p.add_argument("--threads", type=int, default=1, help="torch threads per process")
    p.add_argument("--repeats", type=int, default=1, help="processes per configuration")
    p.add_argument("--out", type=Path, default=Path("benchmarks/memory.md"))
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return
    start = time.perf_counter()
    rows = []
    for n_steps in args.n_steps:
        for chunk in (args.chunk, None):
            for _ in range(args.repeats):
                config = {
                    "target": args.target,
                    "method": args.method,
                    "batch_size": args.batch_size,
                    "n_steps": n_steps,
                    "chunk": chunk,
                    "device": args.device,
                    "threads": args.threads,
                }
                row = run_in_subprocess(config)
                print(
                    f"{n_steps} steps, chunk={chunk}: peak {row['peak_mib']:.1f} MiB "
                    f"in {row['seconds']:.2f} s",
                    flush=True,
                )
                rows.append(row)
    text = render(args, rows, time.perf_counter() - start)
    write_text_atomic(args.out, text)
    print(text)


if __name__ == "__main__":
    main()
