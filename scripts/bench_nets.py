"""Forward + backward time of the control networks per 512 samples, side by side.

For DW-4 (4 particles in 2-D), LJ-13 and LJ-55 (13 and 55 in 3-D) this times one
training-like step, ``net(t, x).square().sum().backward()`` on a batch of 512, for

- the e3nn control as configured in ``configs/net/e3nn_<system>.yaml`` (and with 8 and
  16 channels, to show how the cost scales),
- the EGNN baseline of ``configs/net/egnn.yaml`` (hidden 64) and a half-width one
  (hidden 32),

all built with the same random seed and measured in alternating rounds (one step of
each network per round), so that a machine busy with other work slows them alike. The
median over rounds is reported, after warm-up steps, as wall-clock time and as the CPU
time of this process (on one thread the CPU time does not count the time this process
waited for the cores). LJ-55 is evaluated in chunks of 128 samples (a batch of 512 in
one piece needs several GB for the EGNN). Runs on the CPU with the given numbers of
torch threads, and on CUDA when a GPU is present (``torch.cuda.synchronize`` around
each step). Prints a markdown table per setting and writes them to
``benchmarks/nets.md``.

    python scripts/bench_nets.py                      # 1 and 2 threads, ~15 min on 2 cores
    python scripts/bench_nets.py --threads 2 --systems dw4 lj13 --rounds 5
    python scripts/bench_nets.py --profile dw4        # torch.profiler table of one step
    python scripts/bench_nets.py --compile            # add torch.compile'd e3nn rows
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import e3nn
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from physsample.nets import EGNN, E3NNControl

SYSTEMS = {"dw4": (4, 2), "lj13": (13, 3), "lj55": (55, 3)}
CHUNK = {"dw4": 512, "lj13": 512, "lj55": 128}
SCALE = {"dw4": 2.0, "lj13": 0.7, "lj55": 1.0}  # spread of the random positions
BATCH = 512
CONFIGS = Path(__file__).resolve().parent.parent / "configs" / "net"


def build_nets(system: str, compile_: bool) -> dict[str, torch.nn.Module]:
    """The networks compared on one system, by row label."""
    n, d = SYSTEMS[system]
    shape = dict(n_particles=n, spatial_dim=d)
    cfg = OmegaConf.load(CONFIGS / f"e3nn_{system}.yaml")
    nets = {}
    torch.manual_seed(0)
    nets[f"E3NNControl, e3nn_{system}.yaml (C={cfg.channels})"] = instantiate(cfg)(**shape)
    for channels in (8, 16):
        if channels != cfg.channels:
            torch.manual_seed(0)
            nets[f"E3NNControl, C={channels}"] = instantiate(cfg, channels=channels)(**shape)
    if compile_:
        torch.manual_seed(0)
        nets[f"E3NNControl, e3nn_{system}.yaml, compiled"] = instantiate(cfg, compile=True)(**shape)
    torch.manual_seed(0)
    nets["EGNN, egnn.yaml (hidden 64)"] = instantiate(OmegaConf.load(CONFIGS / "egnn.yaml"))(
        **shape
    )
    torch.manual_seed(0)
    nets["EGNN, hidden 32"] = EGNN(n, d, hidden=32)
    for net in nets.values():
        _make_output_nonzero(net)
    return nets


def _make_output_nonzero(net: torch.nn.Module) -> None:
    """Perturb the zero-initialised last layers, as after a few training steps."""
    with torch.no_grad():
        for param in net.parameters():
            if param.abs().max() == 0:
                param.normal_(0.0, 0.1)


def make_step(net, system: str, device: torch.device):
    """A closure doing forward + backward on 512 samples (in chunks), and one zeroing."""
    n, d = SYSTEMS[system]
    g = torch.Generator().manual_seed(1)
    x = (SCALE[system] * torch.randn(BATCH, n * d, generator=g)).to(device)
    t = torch.rand(BATCH, generator=g).to(device)
    chunk = CHUNK[system]

    def step():
        for xs, ts in zip(x.split(chunk), t.split(chunk), strict=True):
            net(ts, xs).square().sum().backward()
        if device.type == "cuda":
            torch.cuda.synchronize()

    return step


def time_side_by_side(nets, system, device, rounds, warmup):
    """Median wall and process-CPU seconds per step of every net, in alternating rounds."""
    steps = {}
    for label, net in nets.items():
        net.to(device)
        steps[label] = make_step(net, system, device)
        for _ in range(warmup):
            steps[label]()
            net.zero_grad(set_to_none=True)
    wall = {label: [] for label in nets}
    cpu = {label: [] for label in nets}
    for _ in range(rounds):
        for label, step in steps.items():
            nets[label].zero_grad(set_to_none=True)
            w0, c0 = time.perf_counter(), time.process_time()
            step()
            wall[label].append(time.perf_counter() - w0)
            cpu[label].append(time.process_time() - c0)
    median = statistics.median
    return {label: (median(wall[label]), median(cpu[label])) for label in nets}


def table(system, nets, timings, baseline, threads, device) -> list[str]:
    where = f"{device.type}" + (f", {threads} torch threads" if device.type == "cpu" else "")
    lines = [
        f"### {system} ({SYSTEMS[system][0]} x {SYSTEMS[system][1]}-D), {where}",
        "",
        "| network | parameters | wall ms / 512 | CPU ms / 512 | EGNN-64 wall / this wall |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for label, net in nets.items():
        wall, cpu = timings[label]
        params = sum(p.numel() for p in net.parameters())
        kernel = f", kernel {net.kernel}" if isinstance(net, E3NNControl) else ""
        ratio = timings[baseline][0] / wall
        lines.append(
            f"| {label}{kernel} | {params:,} | {1e3 * wall:.1f} | {1e3 * cpu:.1f} | {ratio:.2f}x |"
        )
    return lines + [""]


def profile(system: str, threads: int) -> None:
    """Print the profiler's top operators for one step of the configured e3nn net and EGNN."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    torch.set_num_threads(threads)
    for label, net in build_nets(system, compile_=False).items():
        if "yaml" not in label:  # the configured networks only
            continue
        step = make_step(net, system, torch.device("cpu"))
        step()
        with torch_profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            step()
        print(f"\n## {label}, {system}, {threads} threads")
        averages = prof.key_averages(group_by_input_shape=True)
        print(averages.table(sort_by="self_cpu_time_total", row_limit=15))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--systems", nargs="+", default=list(SYSTEMS), choices=list(SYSTEMS))
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--rounds", type=int, default=7, help="timed rounds (LJ-55: 3)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--compile", action="store_true", help="add torch.compile'd e3nn rows")
    parser.add_argument("--profile", choices=list(SYSTEMS), help="profile one system and exit")
    parser.add_argument("--out", default="benchmarks/nets.md")
    args = parser.parse_args()
    if args.profile:
        profile(args.profile, args.threads[0])
        return
    settings = [(torch.device("cpu"), threads) for threads in args.threads]
    if torch.cuda.is_available():
        settings.append((torch.device("cuda"), torch.get_num_threads()))
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    lines = [
        "# Control networks: forward + backward time per 512 samples",
        "",
        f"`python scripts/bench_nets.py {' '.join(sys.argv[1:])}`".replace(" `", "`"),
        f"on {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs "
        f"(load average {load:.1f} at the start), torch {torch.__version__}, "
        f"e3nn {e3nn.__version__}, {time.strftime('%Y-%m-%d %H:%M')}.",
        "",
        "One step is `net(t, x).square().sum().backward()` on 512 samples (LJ-55: four "
        "chunks of 128), float32, zero-initialised layers perturbed so that every "
        f"gradient is non-zero. Median of {args.rounds} rounds (LJ-55: 3) after "
        f"{args.warmup} warm-up steps; the networks alternate within each round.",
        "",
    ]
    for device, threads in settings:
        torch.set_num_threads(threads)
        for system in args.systems:
            nets = build_nets(system, args.compile)
            rounds = 3 if system == "lj55" else args.rounds
            timings = time_side_by_side(nets, system, device, rounds, args.warmup)
            block = table(system, nets, timings, "EGNN, egnn.yaml (hidden 64)", threads, device)
            print("\n".join(block), flush=True)
            lines += block
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
