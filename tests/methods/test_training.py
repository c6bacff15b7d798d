"""The shared training loop: convergence, guards, EMA, logs, checkpoints, exact resume."""

from __future__ import annotations

import csv
import math
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from physsample.errors import ConfigError, UserError
from physsample.methods.training import (
    CheckpointError,
    Trainer,
    TrainingDivergedError,
    lr_factor,
)

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models run faster, and reproducibly, on one thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _quadratic_loss(model, generator, step):
    """Least squares of y = x1^2 + 2 x2 on x ~ U(-1, 1)^2: optimum w = (0, 2), b = 1/3."""
    dtype = next(model.parameters()).dtype
    x = 2 * torch.rand(256, 2, generator=generator, dtype=dtype) - 1
    y = x[:, :1] ** 2 + 2 * x[:, 1:]
    loss = ((model(x) - y) ** 2).mean()
    return loss, {"ess": 1.0 / (1.0 + loss.item()), "log_z": -float(step)}


def _linear(seed=0, dtype=torch.float32):
    torch.manual_seed(seed)
    return torch.nn.Linear(2, 1).to(dtype)


def _read_csv(path):
    with open(path, newline="") as file:
        return list(csv.DictReader(file))


def _trainer(model, loss_fn=_quadratic_loss, **options):
    defaults = dict(lr=0.05, device="cpu", seed=0, progress=False)
    return Trainer(model, loss_fn, **{**defaults, **options})


def test_lr_schedule():
    assert lr_factor(0, 100, "constant", 4) == 0.25
    assert lr_factor(3, 100, "cosine", 4) == 1.0
    assert lr_factor(4, 100, "cosine", 4) == 1.0
    assert lr_factor(52, 100, "cosine", 4) == pytest.approx(0.5)
    assert lr_factor(99, 100, "constant", 0) == 1.0
    assert lr_factor(100, 100, "cosine", 0) == pytest.approx(0.0)


def test_bad_options_raise_config_errors():
    model = _linear()
    for options in [{"lr": 0}, {"lr_schedule": "linear"}, {"ema_decay": 1.0}, {"grad_clip": 0}]:
        with pytest.raises(ConfigError):
            _trainer(model, **options)


def test_converges_to_the_known_optimum():
    model = _linear()
    trainer = _trainer(model, lr=0.05, warmup=10, ema_decay=0.9).fit(400)
    assert trainer.step == 400 and trainer.bad_steps == 0
    expected = torch.tensor([0.0, 2.0, 1 / 3])
    for net in (model, trainer.ema_model()):
        found = torch.cat([net.weight.detach()[0], net.bias.detach()])
        torch.testing.assert_close(found, expected, atol=0.02, rtol=0)
    # the loss reached the irreducible variance of x1^2 around its mean, 4/45
    assert trainer.history[-1]["loss"] == pytest.approx(4 / 45, rel=0.2)
    assert trainer.history[0]["lr"] == pytest.approx(0.005)


def test_non_finite_steps_are_skipped_and_counted():
    seen = []

    def loss_fn(model, generator, step):
        seen.append(model.weight.detach().clone())
        loss, info = _quadratic_loss(model, generator, step)
        if step in (2, 3):
            return loss * float("nan"), info
        if step == 5:  # finite loss, non-finite gradient: d sqrt(u)/du at u = 0
            return loss + torch.sqrt(0 * model.weight).sum(), info
        return loss, info

    trainer = _trainer(_linear(), loss_fn, max_bad_steps=3).fit(8)
    assert trainer.bad_steps == 3 and trainer.consecutive_bad_steps == 0
    assert [row["skipped"] for row in trainer.history] == [0, 0, 1, 1, 0, 1, 0, 0]
    assert math.isnan(trainer.history[2]["loss"]) and math.isnan(trainer.history[5]["grad_norm"])
    assert torch.equal(seen[2], seen[3]) and torch.equal(seen[3], seen[4])  # no update
    assert torch.equal(seen[5], seen[6]) and not torch.equal(seen[6], seen[7])
    assert torch.isfinite(trainer.model.weight).all()


def test_divergence_stops_after_max_bad_steps():
    def loss_fn(model, generator, step):
        loss, info = _quadratic_loss(model, generator, step)
        return (loss * float("inf") if step >= 3 else loss), info

    trainer = _trainer(_linear(), loss_fn, max_bad_steps=4)
    with pytest.raises(TrainingDivergedError) as info:
        trainer.fit(50)
    assert isinstance(info.value, UserError)
    message = str(info.value)
    assert "\n" not in message and "learning rate" in message and "4 consecutive" in message
    assert trainer.step == 3 + 4 and trainer.bad_steps == 4


@pytest.mark.parametrize("warmup", [False, True])
def test_ema_is_the_analytic_average_of_the_parameter_path(warmup):
    path = []

    def loss_fn(model, generator, step):
        path.append(model.weight.detach().clone())
        loss, info = _quadratic_loss(model, generator, step)
        return (loss * float("nan") if step == 4 else loss), info

    model = _linear(dtype=torch.float64)
    trainer = _trainer(model, loss_fn, ema_decay=0.8, ema_warmup=warmup, lr=0.1).fit(20)
    path.append(model.weight.detach().clone())
    expected, n = path[0], 0
    for k in range(1, len(path)):
        if k - 1 == 4:  # skipped step: parameters and average unchanged
            continue
        decay = min(0.8, (1 + n) / (10 + n)) if warmup else 0.8
        expected, n = decay * expected + (1 - decay) * path[k], n + 1
    torch.testing.assert_close(trainer.ema[0], expected, rtol=1e-12, atol=1e-14)
    assert not torch.allclose(expected, path[-1])  # the average lags the path
    final = model.weight.detach().clone()
    with trainer.ema_weights() as swapped:
        assert swapped is model and torch.equal(model.weight, trainer.ema[0])
    assert torch.equal(model.weight, final)
    assert torch.equal(trainer.ema_model().weight, trainer.ema[0])
    assert torch.equal(model.weight, final)


def test_csv_log_after_resume_has_each_step_once(tmp_path):
    options = dict(
        checkpoint_dir=tmp_path / "ckpt", checkpoint_every=3, log_csv=tmp_path / "log.csv"
    )
    _trainer(_linear(), **options).fit(7)
    names = sorted(p.name for p in (tmp_path / "ckpt").iterdir())
    assert names == ["checkpoint-00000006.pt", "checkpoint-00000007.pt"]  # keep 2, end saved
    (tmp_path / "ckpt" / names[-1]).unlink()  # as if killed after step 7, before its checkpoint
    first = _read_csv(tmp_path / "log.csv")
    with open(tmp_path / "log.csv", "a") as file:
        file.write("7,0.12")  # a row cut short by the kill
    resumed = _trainer(_linear(seed=1), **options)
    resumed.fit(10)
    assert [row["step"] for row in resumed.history] == [6, 7, 8, 9]
    rows = _read_csv(tmp_path / "log.csv")
    assert [int(row["step"]) for row in rows] == list(range(10))
    columns = ["step", "loss", "lr", "grad_norm", "wall_time", "skipped", "ess", "log_z"]
    assert list(rows[0]) == columns
    assert rows[:6] == first[:6]
    assert rows[6]["loss"] == first[6]["loss"]  # replayed from the checkpoint: same numbers
    assert rows[6]["wall_time"] != first[6]["wall_time"]  # ... but a new row
    times = [float(row["wall_time"]) for row in rows]
    assert times == sorted(times)


def test_corrupt_or_foreign_checkpoint_names_the_file(tmp_path):
    ckpt = tmp_path / "ckpt"
    _trainer(_linear(), checkpoint_dir=ckpt, checkpoint_every=2).fit(4)
    latest = ckpt / "checkpoint-00000004.pt"
    data = latest.read_bytes()
    latest.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError) as info:
        _trainer(_linear(), checkpoint_dir=ckpt).fit(6)
    assert str(latest) in str(info.value) and "corrupt" in str(info.value)
    assert isinstance(info.value, UserError) and "\n" not in str(info.value)

    latest.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="checkpoint-00000004"):
        _trainer(_linear(), checkpoint_dir=ckpt).fit(6)

    latest.unlink()  # the previous one is intact, but belongs to a different model
    with pytest.raises(CheckpointError, match="does not match"):
        _trainer(torch.nn.Linear(3, 1), checkpoint_dir=ckpt).fit(6)


CHILD = textwrap.dedent(
    """
    import os, signal, sys
    import torch
    from physsample.methods.training import Trainer

    torch.set_num_threads(1)
    folder, steps, kill_at = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    torch.manual_seed(123)  # the global RNG draws the weights and the dropout masks
    model = torch.nn.Sequential(
        torch.nn.Linear(3, 16), torch.nn.Tanh(), torch.nn.Dropout(0.2), torch.nn.Linear(16, 3)
    )

    def loss_fn(model, generator, step):
        if step == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        x = torch.randn(32, 3, generator=generator)
        loss = ((model(x) - x.flip(1) ** 2) ** 2).mean()
        if step == 8:
            loss = loss * float("nan")
        return loss, {"ess": 0.5, "n_dropped": float(step % 3)}

    trainer = Trainer(
        model, loss_fn, lr=1e-2, warmup=3, ema_decay=0.9, device="cpu", seed=7,
        checkpoint_dir=os.path.join(folder, "ckpt"), checkpoint_every=5,
        log_csv=os.path.join(folder, "log.csv"), progress=False,
    )
    trainer.fit(steps)
    result = {"model": model.state_dict(), "ema": trainer.ema_model().state_dict(),
              "bad_steps": trainer.bad_steps, "step": trainer.step}
    torch.save(result, os.path.join(folder, "result.pt"))
    """
)


def _run_child(folder, steps, kill_at=-1):
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    script = folder.parent / "child.py"
    script.write_text(CHILD)
    args = [sys.executable, str(script), str(folder), str(steps), str(kill_at)]
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=120)


def test_killed_run_resumes_exactly(tmp_path):
    steps = 24
    plain, killed = tmp_path / "plain", tmp_path / "killed"
    plain.mkdir(), killed.mkdir()
    done = _run_child(plain, steps)
    assert done.returncode == 0, done.stderr

    died = _run_child(killed, steps, kill_at=13)
    assert died.returncode == -signal.SIGKILL, died.stderr
    assert sorted(p.name for p in (killed / "ckpt").iterdir() if not p.name.startswith(".")) == [
        "checkpoint-00000005.pt",
        "checkpoint-00000010.pt",
    ]
    assert not (killed / "result.pt").exists()
    assert len(_read_csv(killed / "log.csv")) == 13  # steps 0..12, three past the checkpoint

    again = _run_child(killed, steps)
    assert again.returncode == 0, again.stderr

    expected = torch.load(plain / "result.pt", weights_only=True)
    found = torch.load(killed / "result.pt", weights_only=True)
    assert found["step"] == steps and found["bad_steps"] == expected["bad_steps"] == 1
    for part in ("model", "ema"):
        assert found[part].keys() == expected[part].keys()
        for key in expected[part]:
            assert torch.equal(found[part][key], expected[part][key]), (part, key)

    plain_rows, killed_rows = _read_csv(plain / "log.csv"), _read_csv(killed / "log.csv")
    assert [int(row["step"]) for row in killed_rows] == list(range(steps))
    for row in (*plain_rows, *killed_rows):
        del row["wall_time"]
    assert killed_rows == plain_rows
