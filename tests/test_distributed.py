"""Data-parallel training: 2 gloo ranks under torchrun take exactly one process's step.

The test launches this file under ``torchrun --standalone --nproc_per_node=2`` (the
worker at the bottom). Each rank gets its half of a fixed batch of trajectories (the
rollout of the whole batch with a fixed generator, sliced by rank); after one training
step the summed gradients, the loss, the dropped count, the batch ESS and log Z, and
the new weights must equal those of one process given the whole batch, to float64
precision. The worker also checks that the ranks simulate different trajectories when
left alone, that only rank 0 writes files, and that a run resumed under torchrun from
rank 0's checkpoint continues exactly.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from physsample import distributed
from physsample.diffusion import Rollout
from physsample.errors import ConfigError
from physsample.methods import PIS
from physsample.systems import get

REPO = Path(__file__).resolve().parents[1]
BATCH = 16


def make_sampler(**options) -> PIS:
    """A small float64 PIS on MW-5 with a random (non-zero) network, same on every rank."""
    settings = dict(
        n_steps=8, batch_size=BATCH, chunk=3, dtype="float64", device="cpu", lr=1e-2,
        lr_schedule="constant", grad_clip=None, max_deviation=15.0, progress=False, seed=0,
    )  # fmt: skip
    sampler = PIS(get("mw5"), **{**settings, **options})
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        for p in sampler.net.parameters():
            p.copy_(0.03 * torch.randn_like(p))
    return sampler


def use_fixed_trajectories(sampler: PIS, seed: int = 123) -> None:
    """Every rank trains on its slice of one fixed batch (drawn with ``seed``)."""
    simulate = sampler._simulate

    def fixed(model, target_log_prob, n, generator, noise_scale=1.0, keep_states=True):
        whole = simulate(
            model, sampler.system.log_prob, n * distributed.world_size(),
            torch.Generator().manual_seed(seed), noise_scale, keep_states,
        )  # fmt: skip
        log_w = whole.log_weights.clone()
        log_w[3] -= 1e4  # an extreme trajectory on rank 0 and a non-finite one on rank 1:
        log_w[12] = -torch.inf  # dropped by the rule of the global batch
        mine = slice(distributed.rank() * n, (distributed.rank() + 1) * n)
        target_log_prob(whole.samples[mine])  # records the energies, as a rollout does
        return Rollout(whole.states[mine], log_w[mine], whole.samples[mine])

    sampler._simulate = fixed


def one_step(sampler: PIS) -> dict:
    use_fixed_trajectories(sampler)
    sampler.fit(1)
    return {
        "grads": [p.grad.clone() for p in sampler.trainer.params],
        "params": [p.detach().clone() for p in sampler.trainer.params],
        "row": sampler.trainer.history[0],
    }


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> Path:
    """Run the worker below on 2 CPU ranks with gloo; the folder of their results.

    The two processes get the environment that ``torchrun --standalone
    --nproc_per_node=2`` gives its workers (the launcher itself, a few seconds of
    start-up, is exercised by the slow CLI test below).
    """
    out = tmp_path_factory.mktemp("ddp")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    env.update(WORLD_SIZE="2", LOCAL_WORLD_SIZE="2", MASTER_ADDR="127.0.0.1")
    env.update(MASTER_PORT=str(_free_port()))
    ranks = [
        subprocess.Popen(
            [sys.executable, __file__, str(out)],
            env={**env, "RANK": str(r), "LOCAL_RANK": str(r)},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )  # fmt: skip
        for r in (0, 1)
    ]
    logs = [rank.communicate(timeout=120)[0] for rank in ranks]
    assert all(rank.returncode == 0 for rank in ranks), "\n".join(logs)[-4000:]
    return out


def test_two_ranks_take_the_single_process_step(two_ranks):
    torch.set_num_threads(1)
    single = one_step(make_sampler())
    assert single["row"]["n_extreme"] == 1 and single["row"]["n_nonfinite"] == 1
    for r in (0, 1):
        ranks = torch.load(two_ranks / f"step-rank{r}.pt")
        for g_ddp, g_one in zip(ranks["grads"], single["grads"], strict=True):
            torch.testing.assert_close(g_ddp, g_one, rtol=1e-10, atol=1e-12)
        for p_ddp, p_one in zip(ranks["params"], single["params"], strict=True):
            torch.testing.assert_close(p_ddp, p_one, rtol=1e-10, atol=1e-12)
        for key in ("loss", "n_dropped", "n_used", "ess", "log_z", "elbo"):
            assert ranks["row"][key] == pytest.approx(single["row"][key], rel=1e-10), key


def test_ranks_simulate_different_trajectories(two_ranks):
    checks = torch.load(two_ranks / "checks.pt")
    assert checks["ranks_differ"]


def test_only_rank_zero_writes_and_resume_is_exact(two_ranks):
    checks = torch.load(two_ranks / "checks.pt")
    assert not (two_ranks / "train-rank1.csv").exists()
    assert not (two_ranks / "sampler-rank1.pt").exists()
    assert (two_ranks / "sampler-rank0.pt").exists()
    rows = (two_ranks / "train-rank0.csv").read_text().splitlines()
    assert [int(line.split(",")[0]) for line in rows[1:]] == [0, 1, 2, 3]
    assert sorted(p.name for p in (two_ranks / "resumed").iterdir()) == [
        "checkpoint-00000002.pt",
        "checkpoint-00000004.pt",
    ]
    state = torch.load(two_ranks / "resumed" / "checkpoint-00000002.pt")
    assert len(state["rank_rng"]) == 2
    assert checks["resume_exact"]


def test_batch_must_split_between_ranks():
    assert distributed.local_batch_size(BATCH) == BATCH  # one process: the whole batch
    assert distributed.rank_seed(7) == 7
    with pytest.raises(ConfigError, match="multiple of the number of ranks"):
        distributed.local_batch_size(0)


@pytest.mark.slow
def test_cli_under_torchrun_trains_on_the_global_batch_and_resumes(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    args = ["-m", "physsample", "stage=train", "system=gmm25", "method=pis", "device=cpu"]
    args += ["method.n_steps=10", "train.batch_size=32", "train.checkpoint_every=2"]
    args += [f"run_dir={tmp_path}", "train.progress=false"]
    for steps in (4, 6):  # the second launch resumes from checkpoint 4
        (tmp_path / "sampler.pt").unlink(missing_ok=True)
        done = subprocess.run(
            [*launch, *args, f"train.steps={steps}"], env=env, capture_output=True, text=True,
            timeout=300,
        )  # fmt: skip
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        assert done.stdout.count("wrote") == 1  # rank 0 alone prints
    rows = (tmp_path / "train.csv").read_text().splitlines()
    header = rows[0].split(",")
    steps = [int(row.split(",")[0]) for row in rows[1:]]
    used = {row.split(",")[header.index("n_used")] for row in rows[1:]}
    assert steps == list(range(6)) and used == {"32.0"}  # the loss saw the global batch
    assert (tmp_path / "sampler.pt").exists()


def _worker(out: Path) -> None:
    """One rank of the 2-rank run (launched by torchrun from the fixture)."""
    torch.set_num_threads(1)
    assert distributed.init_from_env("cpu") and distributed.world_size() == 2
    r = distributed.rank()
    torch.save(one_step(make_sampler()), out / f"step-rank{r}.pt")

    free = make_sampler()  # no fixed batch: each rank its own generator
    with torch.no_grad():
        x = free._rollout(free.model, free.trainer.generator).samples
    both = distributed.gather(x)
    ranks_differ = not torch.equal(both[: BATCH // 2], both[BATCH // 2 :])

    ckpt = dict(checkpoint_every=2, lr=1e-3)
    straight = make_sampler(checkpoint_dir=out / "straight", **ckpt).fit(4)
    log = out / f"train-rank{r}.csv"
    make_sampler(checkpoint_dir=out / "resumed", log_csv=log, **ckpt).fit(2)
    resumed = make_sampler(checkpoint_dir=out / "resumed", log_csv=log, **ckpt)
    resumed.fit(4)  # starts from rank 0's checkpoint 2
    resumed.save(out / f"sampler-rank{r}.pt")
    same = all(
        torch.equal(a, b)
        for a, b in zip(straight.trainer.params, resumed.trainer.params, strict=True)
    )
    same = torch.tensor(float(same))
    distributed.all_reduce_sum(same)
    if r == 0:
        torch.save({"ranks_differ": ranks_differ, "resume_exact": float(same) == 2.0},
                   out / "checks.pt")  # fmt: skip
    distributed.shutdown(exit_process=True)


if __name__ == "__main__":
    _worker(Path(sys.argv[1]))
