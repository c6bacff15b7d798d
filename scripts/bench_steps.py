"""Training steps per second and sampling speed of a diffusion sampler on DW-4, LJ-13, LJ-55.

For each system this builds a sampler (DDS by default: its Gaussian reference needs no
MCMC) with the tuned e3nn control of ``configs/net/e3nn_<system>.yaml``
(:class:`physsample.nets.E3NNControl`), then times

- training: ``--steps`` log-variance steps (``--batch`` trajectories of ``--n-steps``
  time steps, chunked gradient) after ``--warmup`` untimed ones, reported as steps/s;
- sampling: ``sampler.sample(--sample-n)`` with the EMA weights (after one untimed
  warm-up draw), reported as samples/s and as integrator steps x samples per second.

It runs on the CPU (``--threads`` torch threads) and, when a GPU is present, on CUDA
(``torch.cuda.synchronize`` before every clock reading), and names the card. The table
is printed and written atomically to ``--out`` (default ``benchmarks/steps.md``) with
the command line, the machine and its load at the top.

    python scripts/bench_steps.py                                   # defaults below
    python scripts/bench_steps.py --systems dw4 lj13 --steps 5 --batch 64
    python scripts/bench_steps.py --devices cuda --compile          # torch.compile'd e3nn
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

import physsample as ps
from physsample.nets import E3NNControl
from physsample.runtime import write_text_atomic

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "configs" / "net"
SYSTEMS = ("dw4", "lj13", "lj55")


def make_net(system, compile_: bool) -> E3NNControl:
    """The e3nn control of ``configs/net/e3nn_<system>.yaml``, seeded."""
    cfg = OmegaConf.to_container(OmegaConf.load(CONFIGS / f"e3nn_{system.name}.yaml"))
    options = {k: v for k, v in cfg.items() if not k.startswith("_")}
    options["compile"] = bool(compile_)
    torch.manual_seed(0)
    return E3NNControl(n_particles=system.n_particles, spatial_dim=system.spatial_dim, **options)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_one(name: str, device: str, args) -> dict:
    """Training steps/s and sampling samples/s of one system on one device."""
    system = ps.systems.get(name)
    method = getattr(ps.methods, args.method)
    sampler = method(
        system, net=make_net(system, args.compile), n_steps=args.n_steps, batch_size=args.batch,
        chunk=args.chunk, device=device, progress=False, seed=0, lr_schedule="constant",
    )  # fmt: skip
    dev = sampler.device
    sampler.fit(args.warmup)
    sync(dev)
    start = time.perf_counter()
    sampler.fit(args.warmup + args.steps)
    sync(dev)
    train_s = time.perf_counter() - start
    sampler.sample(min(args.sample_n, 64), generator=0, batch_size=args.sample_n)
    sync(dev)
    start = time.perf_counter()
    sampler.sample(args.sample_n, generator=1, batch_size=args.sample_n)
    sync(dev)
    sample_s = time.perf_counter() - start
    return {
        "system": name,
        "device": str(dev),
        "dim": system.dim,
        "steps_per_s": args.steps / train_s,
        "s_per_step": train_s / args.steps,
        "samples_per_s": args.sample_n / sample_s,
        "sample_s": sample_s,
        "skipped": sampler.trainer.bad_steps,
    }


def machine(device: str) -> str:
    if device == "cuda":
        return f"CUDA: {torch.cuda.get_device_name(0)}"
    cpu = platform.processor() or "cpu"
    try:
        with open("/proc/cpuinfo") as file:
            cpu = next(line.split(":", 1)[1].strip() for line in file if "model name" in line)
    except (OSError, StopIteration):
        pass
    return f"CPU: {cpu}, {os.cpu_count()} cores, {torch.get_num_threads()} torch thread(s)"


def table(rows: list[dict], args) -> str:
    head = (
        "| system | dim | device | train steps/s | s/step | samples/s | "
        f"sample wall (n={args.sample_n}) | skipped |\n" + "| --- " * 8 + "|\n"
    )
    lines = [
        f"| {r['system']} | {r['dim']} | {r['device']} | {r['steps_per_s']:.3g} | "
        f"{r['s_per_step']:.3g} | {r['samples_per_s']:.4g} | {r['sample_s']:.3g} s | "
        f"{r['skipped']} |"
        for r in rows
    ]
    return head + "\n".join(lines) + "\n"


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--systems", nargs="+", default=list(SYSTEMS), choices=SYSTEMS)
    p.add_argument("--devices", nargs="+", default=None, help="default: cpu, and cuda if present")
    p.add_argument("--method", default="DDS", choices=["PIS", "DDS", "DIS"])
    p.add_argument("--batch", type=int, default=256, help="trajectories per training step")
    p.add_argument("--n-steps", type=int, default=100, help="time steps of the process")
    p.add_argument("--chunk", type=int, default=25, help="time steps per gradient chunk")
    p.add_argument("--steps", type=int, default=10, help="timed training steps")
    p.add_argument("--warmup", type=int, default=1, help="untimed training steps first")
    p.add_argument("--sample-n", type=int, default=1024, help="samples in the timed draw")
    p.add_argument("--threads", type=int, default=1, help="torch threads on the CPU")
    p.add_argument("--compile", action="store_true", help="torch.compile the e3nn control")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "steps.md")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse(sys.argv[1:] if argv is None else argv)
    torch.set_num_threads(args.threads)
    devices = args.devices or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    text = [
        "# Training and sampling speed (scripts/bench_steps.py)\n",
        f"Command: `python scripts/{Path(__file__).name} {' '.join(sys.argv[1:])}`  ",
        f"Method {args.method}, e3nn control of configs/net/e3nn_<system>.yaml"
        f"{' (torch.compile)' if args.compile else ''}, log-variance loss, batch "
        f"{args.batch}, {args.n_steps} time steps, chunk {args.chunk}, {args.steps} timed "
        f"steps after {args.warmup} warm-up; torch {torch.__version__}; load average at "
        f"start {load:.2f}.\n",
    ]
    if "cuda" not in devices:
        text.append("No GPU in this run: CUDA numbers were not taken.\n")
    for device in devices:
        rows = []
        for name in args.systems:
            row = bench_one(name, device, args)
            print(row, flush=True)
            rows.append(row)
        text += [f"## {machine(device)}\n", table(rows, args)]
    text = "\n".join(text)
    print(text)
    write_text_atomic(args.out, text)


if __name__ == "__main__":
    main()
