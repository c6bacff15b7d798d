"""Time the core speed-ups against the code they replaced, side by side in one run.

1. ``fit_gmm`` on gmm25 (10k exact samples): the old single k-means++ start and EM
   (reconstructed below as ``old_fit_gmm``) against greedy k-means++ with Lloyd
   iterations, known modes as ``init_means`` and the coarse-to-fine BIC search. Reports
   time, modes recovered (a fitted mean within 0.1) and the importance-sampling ESS of
   the untrained LRDS built on each fit.
2. and 3. One LRDS and one DIS training iteration on gmm25 (batch 256, 100 steps,
   chunk 25, log-variance loss) with the old per-row time embedding (``OldTimeMLP``)
   and the old one-network-call-per-step chunked gradient (``old_chunked_gradients``),
   each alone and both together, on 1 and 2 torch threads.

Old and new are measured in alternating rounds and the median is reported, so that a
machine busy with other work slows both alike. Writes ``benchmarks/core.md``.

    python scripts/bench_core.py            # about 10 minutes on 2 CPU cores
    python scripts/bench_core.py --quick    # without the old BIC search with n_init=10
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import platform
import statistics
import time
from pathlib import Path

import torch
from torch import nn

import physsample as ps
from physsample.diffusion import GMM, fit_gmm
from physsample.diffusion import path as path_module
from physsample.methods import DIS, LRDS
from physsample.nets import FourierMLP

F64 = torch.float64


# ----------------------------------------------------------------- the old code paths
def _old_kmeans_pp(x, k, generator):
    first = torch.randint(x.shape[0], (1,), generator=generator)
    centres = x[first]
    for _ in range(1, k):
        d2 = torch.cdist(x, centres).min(dim=1).values ** 2
        probs = d2 / d2.sum() if float(d2.sum()) > 0 else torch.ones_like(d2)
        centres = torch.cat([centres, x[torch.multinomial(probs, 1, generator=generator)]])
    return centres


def _old_m_step(x, resp, reg):
    nk = resp.sum(dim=0) + 10 * torch.finfo(x.dtype).eps
    means = resp.T @ x / nk[:, None]
    diff = x[:, None, :] - means
    cov = torch.einsum("nkd,nke->kde", resp[:, :, None] * diff, diff) / nk[:, None, None]
    return nk / x.shape[0], means, cov + reg * torch.eye(x.shape[1], dtype=x.dtype)


def _old_log_density(x, means, cov):
    diff = x[:, None, :] - means
    chol = torch.linalg.cholesky(cov)
    sol = torch.linalg.solve_triangular(chol, diff.permute(1, 2, 0), upper=False)
    quad = (sol * sol).sum(dim=1).T
    logdet = 2 * torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(dim=-1)
    return -0.5 * (quad + logdet + x.shape[1] * math.log(2 * math.pi))


def _old_em(x, k, generator, reg, max_iter=300, tol=1e-5):
    centres = _old_kmeans_pp(x, k, generator)
    resp = nn.functional.one_hot(torch.cdist(x, centres).argmin(dim=1), k).to(x.dtype)
    previous = -math.inf
    for _ in range(max_iter):
        weights, means, cov = _old_m_step(x, resp, reg)
        joint = _old_log_density(x, means, cov) + torch.log(weights)
        norm = torch.logsumexp(joint, dim=1)
        resp = torch.exp(joint - norm[:, None])
        ll = float(norm.mean())
        if ll - previous < tol:
            break
        previous = ll
    return ll, weights, means, cov


def old_fit_gmm(x, n_components=None, max_components=10, n_init=3, seed=0) -> GMM:
    """fit_gmm as it was (full covariances): k-means++ starts, best of n_init, every K."""
    x = torch.as_tensor(x).detach().to("cpu", F64)
    n, d = x.shape
    reg = 1e-6 * float(x.var(dim=0).mean())
    generator = torch.Generator().manual_seed(seed)
    candidates = [n_components] if n_components else range(1, min(max_components, n) + 1)
    best = None
    for k in candidates:
        ll, w, mu, cov = max(
            (_old_em(x, k, generator, reg) for _ in range(n_init)), key=lambda f: f[0]
        )
        bic = -2 * n * ll + ((k - 1) + k * d + k * d * (d + 1) // 2) * math.log(n)
        if best is None or bic < best[0]:
            best = (bic, w, mu, cov)
    return GMM.from_covariances(best[2], best[3], best[1])


class OldTimeMLP(nn.Module):
    """A FourierMLP fed one time per row, as before: the embedding runs on all B rows."""

    def __init__(self, net: FourierMLP) -> None:
        super().__init__()
        self.net = net

    def forward(self, t, x):
        return self.net(torch.as_tensor(t, dtype=x.dtype).expand(x.shape[0]).contiguous(), x)


def old_chunked_gradients(process, control_fn, states, params, grad, chunk, steps):
    """The chunked LV gradient as it was: one control call per step."""
    total = [torch.zeros_like(p) for p in params]
    if not params:
        return total
    states = torch.where(torch.isfinite(states), states, torch.zeros_like(states))
    c = process.coefficients(states.dtype, states.device)
    scale = process.n_steps / max(len(steps), 1)
    with torch.enable_grad():
        path_module._accumulate(total, -process.log_prior(states[:, 0]), params, grad)
        for start in range(0, len(steps), chunk):
            term = 0.0
            for k in steps[start : start + chunk]:
                term = term - process.log_forward(c, k, states[:, k], states[:, k + 1], control_fn)
            path_module._accumulate(total, term, params, grad * scale)
    return total


@contextlib.contextmanager
def chunked_gradients(old: bool):
    """Swap the old per-step chunked gradient in for the duration."""
    new = path_module._chunked_gradients
    path_module._chunked_gradients = old_chunked_gradients if old else new
    try:
        yield
    finally:
        path_module._chunked_gradients = new


# ---------------------------------------------------------------------------- fit_gmm
def _recovered(modes, means) -> int:
    return int((torch.cdist(modes, means.double()).min(dim=1).values < 0.1).sum())


def _timed(fn, *args, **kwargs):
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - start


def _untrained_ess(system, gmm, seed: int) -> float:
    sampler = LRDS(system, reference=gmm, n_steps=100, device="cpu", progress=False)
    return sampler.log_z(10_000, generator=seed).ess


def bench_fit_fixed_k(system, seeds: int) -> list[str]:
    """K = 25, one EM run: old vs new, per seed."""
    modes = system.modes.double()
    rows = []
    variants = {
        "old: 1 k-means++ start": lambda x, s: old_fit_gmm(x, 25, n_init=1, seed=s),
        "new: n_init=1 (greedy k-means++, best of 3 Lloyd)": lambda x, s: fit_gmm(
            x, 25, n_init=1, seed=s
        ),
        "new: n_init=1, init_means=modes": lambda x, s: fit_gmm(
            x, 25, n_init=1, init_means=modes, seed=s
        ),
    }
    stats = {name: ([], [], []) for name in variants}
    for seed in range(seeds):
        x = system.sample_exact(10_000, torch.Generator().manual_seed(seed))
        for name, fit in variants.items():
            gmm, seconds = _timed(fit, x, seed)
            times, counts, ess = stats[name]
            times.append(seconds)
            counts.append(_recovered(modes, gmm.means))
            ess.append(_untrained_ess(system, gmm, seed) if seed < 5 else math.nan)
    for name, (times, counts, ess) in stats.items():
        ok = sum(c == 25 for c in counts)
        ess_5 = [e for e in ess if not math.isnan(e)]
        rows.append(
            f"| {name} | {statistics.median(times):.3f} | {ok}/{seeds} | "
            f"{min(counts)}-{max(counts)} | {min(ess_5):.3f}-{max(ess_5):.3f} |"
        )
        print(rows[-1], flush=True)
    return rows


def bench_bic(system, quick: bool) -> list[str]:
    """BIC search over K = 1..25 (LRDS's max(10, n_modes)) on seed 0."""
    modes = system.modes.double()
    x = system.sample_exact(10_000, torch.Generator().manual_seed(0))
    variants = {
        "old: every K, n_init=3 (old fit_gmm default)": lambda: old_fit_gmm(
            x, max_components=25, n_init=3
        ),
        "new: coarse grid + refine, n_init=1 (default)": lambda: fit_gmm(x, max_components=25),
        "new: every K (search='all'), n_init=1": lambda: fit_gmm(
            x, max_components=25, search="all"
        ),
        "new: grid, n_init=1, init_means=modes (LRDS after MALA)": lambda: fit_gmm(
            x, max_components=25, init_means=modes
        ),
        "new: grid, max_components=30": lambda: fit_gmm(x, max_components=30),
    }
    if not quick:
        variants = {
            "old: every K, n_init=10 (old LRDS default)": lambda: old_fit_gmm(
                x, max_components=25, n_init=10
            ),
            **variants,
        }
    rows = []
    for name, fit in variants.items():
        gmm, seconds = _timed(fit)
        rows.append(
            f"| {name} | {seconds:.1f} | {gmm.n_components} | {_recovered(modes, gmm.means)} |"
        )
        print(rows[-1], flush=True)
    return rows


# ----------------------------------------------------------------- training iterations
def _sampler(method: str, system, gmm: GMM, old_mlp: bool):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = FourierMLP(system.dim, hidden=64, n_layers=3)
    net = OldTimeMLP(net) if old_mlp else net
    options = dict(n_steps=100, batch_size=256, chunk=25, device="cpu", progress=False, net=net)
    if method == "LRDS":
        return LRDS(system, reference=gmm, **options)
    return DIS(system, **options)


def _seconds_per_iteration(sampler, old_path: bool, n: int) -> float:
    with chunked_gradients(old_path):
        done = sampler.trainer.step
        sampler.fit(done + 1)  # warm-up
        start = time.perf_counter()
        sampler.fit(done + 1 + n)
    return (time.perf_counter() - start) / n


VARIANTS = {  # name: (old time embedding, old chunked gradient)
    "old (both)": (True, True),
    "new time embedding only": (False, True),
    "new chunked gradient only": (True, False),
    "new (both)": (False, False),
}


def bench_training(system, gmm, threads: int, rounds: int, n: int) -> list[str]:
    torch.set_num_threads(threads)
    rows = []
    for method in ("LRDS", "DIS"):
        samplers = {name: _sampler(method, system, gmm, old) for name, (old, _) in VARIANTS.items()}
        times = {name: [] for name in VARIANTS}
        for _ in range(rounds):  # alternate, so that background load hits all alike
            for name, (_, old_path) in VARIANTS.items():
                times[name].append(_seconds_per_iteration(samplers[name], old_path, n))
        base = statistics.median(times["old (both)"])
        for name in VARIANTS:
            t = statistics.median(times[name])
            rows.append(f"| {method} | {threads} | {name} | {t:.3f} | {base / t:.2f}x |")
            print(rows[-1], flush=True)
    return rows


def check_identical(system, gmm) -> str:
    """The new paths give the old numbers: one LV gradient, float64, old vs new."""
    from physsample.diffusion import log_variance_loss, log_weights_from_states, simulate

    grads = []
    for old in (True, False):
        sampler = _sampler("LRDS", system, gmm, old)
        sampler.model.double()
        net = sampler.net.net if old else sampler.net  # the FourierMLP itself
        with torch.no_grad():  # a non-zero control, the same for both
            net.body[-1].weight.normal_(generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            out = simulate(
                sampler.process, sampler.model, system.log_prob, 256,
                generator=torch.Generator().manual_seed(0), dtype=F64,
            )  # fmt: skip
        params = [p for p in sampler.model.parameters() if p.requires_grad]
        with chunked_gradients(old):
            log_w = log_weights_from_states(
                sampler.process, sampler.model, system.log_prob, out.states,
                chunk=25, params=params, log_weights=out.log_weights,
            )  # fmt: skip
            grads.append(torch.autograd.grad(log_variance_loss(log_w)[0], params))
    diff = max(float((a - b).abs().max()) for a, b in zip(*grads, strict=True))
    return f"max |grad_old - grad_new| over all parameters (float64): {diff:.2e}"


# ----------------------------------------------------------------------------- report
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="skip the old n_init=10 BIC run")
    parser.add_argument("--seeds", type=int, default=10, help="seeds of the K=25 fits")
    parser.add_argument("--rounds", type=int, default=3, help="alternating timing rounds")
    parser.add_argument("--iterations", type=int, default=3, help="iterations per round")
    parser.add_argument("--out", default="benchmarks/core.md")
    args = parser.parse_args()
    torch.set_num_threads(1)
    system = ps.systems.get("gmm25")
    load = os.getloadavg()[0]
    header = (
        f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPU cores, load average {load:.1f} at the start"
    )
    print(header)
    fixed = bench_fit_fixed_k(system, args.seeds)
    bic = bench_bic(system, args.quick)
    data = system.sample_exact(10_000, torch.Generator().manual_seed(0))
    gmm = fit_gmm(data, 25, init_means=system.modes)
    same = check_identical(system, gmm)
    print(same)
    training = []
    for threads in (1, 2):
        training += bench_training(system, gmm, threads, args.rounds, args.iterations)
    busy = load >= (os.cpu_count() or 1)
    write_report(Path(args.out), header, fixed, bic, same, training, args, busy)


def write_report(path, header, fixed, bic, same, training, args, busy: bool) -> None:
    lines = [
        "# Core speed-ups: fit_gmm, FourierMLP time embedding, chunked LV gradient",
        "",
        "Written by `python scripts/bench_core.py"
        + (" --quick" if args.quick else "")
        + "`; old and new code side by side in one run "
        "(the old code paths are reconstructed in the script). " + header + ".",
        "",
        "## fit_gmm on gmm25, 10k exact samples, 1 thread",
        "",
        f"K = 25, one EM run, seeds 0-{args.seeds - 1}: median time, seeds with all 25 "
        "modes recovered (a fitted mean within 0.1 of each mode), range of the recovered "
        "count, and the ESS of the untrained LRDS (100 steps, 10k samples) on the fit for "
        "seeds 0-4.",
        "",
        "| fit | seconds | all 25 found | recovered | untrained LRDS ESS |",
        "| --- | --- | --- | --- | --- |",
        *fixed,
        "",
        "BIC search, K in 1..25 (LRDS's default max(10, n_modes)) unless stated, seed 0:",
        "",
        "| search | seconds | K chosen | modes recovered |",
        "| --- | --- | --- | --- |",
        *bic,
        "",
        "## One training iteration on gmm25",
        "",
        "Log-variance loss, batch 256, 100 steps, chunk 25, FourierMLP(hidden 64, 3 "
        f"layers), float32, CPU; median of {args.rounds} alternating rounds of "
        f"{args.iterations} iterations. {same}.",
        "",
        "| method | threads | variant | seconds / iteration | speed-up vs old |",
        "| --- | --- | --- | --- | --- |",
        *training,
        "",
    ]
    if busy:
        lines += [
            "The machine had more runnable processes than cores (other jobs): with 2 "
            "threads every torch operation waits for a descheduled thread, so the 2-thread "
            "times are far above the 1-thread ones and mostly count operations; compare "
            "the ratios, not the absolute 2-thread times.",
            "",
        ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
