"""The training loop shared by all samplers: Adam, clipping, EMA, guards, logs, checkpoints.

A method supplies only its loss, as a function

    loss_fn(model, generator, step) -> (loss, info)

where ``loss`` is a scalar tensor to minimise, ``generator`` is the trainer's
``torch.Generator`` (the only source of randomness a loss should use), ``step`` is the
0-based index of the current step, and ``info`` is a dict of floats to log (for example
``ess``, ``log_z``, ``n_dropped``). :class:`Trainer` does the rest:

- Adam with a constant or cosine learning rate, after an optional linear warm-up;
- gradient-norm clipping;
- an exponential moving average (EMA) of the weights, swapped in with
  :meth:`Trainer.ema_weights` for sampling;
- guards: a step whose loss or gradient is not finite is skipped and counted, and
  ``max_bad_steps`` consecutive skipped steps stop the run with
  :class:`TrainingDivergedError`;
- a tqdm progress bar and a CSV log with one row per step;
- atomic checkpoints, from which :meth:`Trainer.fit` resumes by itself. A run killed at
  any moment and resumed continues exactly as if it had not been interrupted (bit for
  bit on the CPU), because the checkpoint holds every piece of state that the next
  steps read: weights, Adam moments, EMA, the trainer's generator, the global torch RNG
  and the step and bad-step counters.

Under torchrun (:mod:`physsample.distributed`) each rank's generator has its own seed,
the gradients are averaged over ranks after ``backward`` (as DistributedDataParallel
does: a loss that is a mean over the rank's batch becomes the mean over all ranks'),
rank 0 alone shows progress and writes the CSV log and the checkpoints (holding every
rank's random state), and every rank resumes from them.
"""

from __future__ import annotations

import copy
import csv
import math
import os
import re
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from physsample import distributed
from physsample.errors import ConfigError, ShapeError, UserError
from physsample.runtime import make_generator, resolve_device

__all__ = ["Trainer", "TrainingDivergedError", "CheckpointError", "LossFn", "lr_factor"]

LossFn = Callable[[nn.Module, torch.Generator, int], tuple[torch.Tensor, dict[str, float]]]

CHECKPOINT_FORMAT = 1
_CHECKPOINT_NAME = re.compile(r"^checkpoint-(\d+)\.pt$")
_FIXED_COLUMNS = ["step", "loss", "lr", "grad_norm", "wall_time", "skipped"]


class TrainingDivergedError(UserError, RuntimeError):
    """Too many consecutive steps had a non-finite loss or gradient."""


class CheckpointError(UserError, RuntimeError):
    """A checkpoint file cannot be read or does not match the model."""


def lr_factor(step: int, total_steps: int, schedule: str, warmup: int) -> float:
    """Multiplier of the base learning rate at 0-based ``step`` of ``total_steps``.

    Linear warm-up from ``1 / warmup`` to 1 over the first ``warmup`` steps, then 1
    (``"constant"``) or a half cosine from 1 down to 0 at ``total_steps`` (``"cosine"``).
    """
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = (step - warmup) / max(total_steps - warmup, 1)
    return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


class Trainer:
    """Train ``model`` by minimising ``loss_fn`` with Adam; see the module docstring.

    Parameters
    ----------
    model
        The network (or a module holding all trainable parameters); moved to ``device``.
    loss_fn
        ``loss_fn(model, generator, step) -> (loss, info)``.
    lr, lr_schedule, warmup
        Base learning rate, ``"cosine"`` (to zero at the ``steps`` given to :meth:`fit`)
        or ``"constant"``, and the number of linear warm-up steps.
    grad_clip
        Maximum global gradient norm, or None for no clipping.
    ema_decay
        Decay of the weight EMA, or None for no EMA. With ``ema_warmup`` the decay of
        the n-th update (n = 0, 1, ...) is ``min(ema_decay, (1 + n) / (10 + n))``, so
        that the average forgets the initial weights early in training.
    max_bad_steps
        Consecutive skipped (non-finite) steps after which training stops.
    device, seed
        Device name (``"auto"``, ``"cpu"``, ``"cuda"``) and the seed of the trainer's
        generator (None: fresh entropy).
    checkpoint_dir, checkpoint_every, keep_checkpoints
        Folder for checkpoints (None: none are written), their period in steps, and how
        many of the latest to keep.
    log_csv
        Path of the CSV log (None: no log).
    progress
        Show a tqdm progress bar (a string: with that label instead of "training").

    Examples
    --------
    >>> model = torch.nn.Linear(1, 1)
    >>> def loss_fn(model, generator, step):
    ...     x = torch.randn(64, 1, generator=generator)
    ...     return ((model(x) - 3 * x) ** 2).mean(), {}
    >>> trainer = Trainer(model, loss_fn, lr=0.05, device="cpu", progress=False)
    >>> _ = trainer.fit(200)
    >>> round(model.weight.item(), 2)
    3.0
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: LossFn,
        *,
        lr: float = 1e-3,
        lr_schedule: str = "cosine",
        warmup: int = 0,
        grad_clip: float | None = 1.0,
        ema_decay: float | None = 0.999,
        ema_warmup: bool = True,
        max_bad_steps: int = 20,
        device: str | torch.device | None = "auto",
        seed: int | None = 0,
        checkpoint_dir: str | os.PathLike | None = None,
        checkpoint_every: int = 100,
        keep_checkpoints: int = 2,
        log_csv: str | os.PathLike | None = None,
        progress: bool | str = True,
    ):
        _check_options(lr, lr_schedule, warmup, grad_clip, ema_decay, max_bad_steps)
        if checkpoint_every < 1 or keep_checkpoints < 1:
            raise ConfigError("checkpoint_every and keep_checkpoints must be at least 1")
        self.device = distributed.rank_device(resolve_device(device))
        self.model = model.to(self.device)
        self.loss_fn = loss_fn
        self.lr, self.lr_schedule, self.warmup = float(lr), lr_schedule, int(warmup)
        self.grad_clip = grad_clip
        self.ema_decay, self.ema_warmup = ema_decay, ema_warmup
        self.max_bad_steps = int(max_bad_steps)
        self.checkpoint_dir = None if checkpoint_dir is None else Path(checkpoint_dir)
        self.checkpoint_every, self.keep_checkpoints = int(checkpoint_every), int(keep_checkpoints)
        self.log_csv = None if log_csv is None else Path(log_csv)
        self.progress = progress

        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.Adam(self.params, lr=self.lr)
        seed = None if seed is None else distributed.rank_seed(seed)  # ranks differ
        self.generator = make_generator(seed, self.device)
        self.ema = None if ema_decay is None else [p.detach().clone() for p in self.params]
        self.ema_updates = 0
        self.step = 0  # number of completed steps, good or skipped
        self.bad_steps = 0
        self.consecutive_bad_steps = 0
        self.elapsed = 0.0  # seconds spent in fit(), summed over resumed runs
        self.total_steps = 0
        self.history: list[dict[str, float]] = []  # rows of the steps run in this process

    # ------------------------------------------------------------------ training
    def fit(self, steps: int) -> Trainer:
        """Train until ``steps`` steps in total have been done, resuming if possible.

        If ``checkpoint_dir`` holds a checkpoint later than the trainer's current step,
        training continues from it. A checkpoint is written every ``checkpoint_every``
        steps and at the end.

        Raises
        ------
        TrainingDivergedError
            After ``max_bad_steps`` consecutive steps with a non-finite loss or gradient.
        CheckpointError
            If the latest checkpoint is unreadable or does not match the model.
        """
        if steps < 0:
            raise ConfigError(f"steps must be non-negative, got {steps}")
        self._resume()
        self._synchronise_ranks()
        self.total_steps = int(steps)
        if self.step >= steps:
            return self
        main = distributed.is_main()
        log = _CsvLog(self.log_csv, keep_before=self.step) if self.log_csv and main else None
        show = bool(self.progress) and main
        label = self.progress if isinstance(self.progress, str) else "training"
        bar = tqdm(total=steps, initial=self.step, disable=not show, desc=label)
        clock = time.perf_counter()
        try:
            while self.step < steps:
                row = self._train_step()
                now = time.perf_counter()
                self.elapsed += now - clock
                clock = now
                row["wall_time"] = self.elapsed
                self._record(row, log, bar)
                if self.consecutive_bad_steps >= self.max_bad_steps:
                    raise TrainingDivergedError(self._diverged_message())
                if self.checkpoint_dir and self.step % self.checkpoint_every == 0:
                    self.save_checkpoint()
            if self.checkpoint_dir and self.latest_checkpoint() != self._checkpoint_path():
                self.save_checkpoint()
        finally:
            bar.close()
            if log:
                log.close()
        return self

    def _train_step(self) -> dict[str, Any]:
        """One step: loss, backward, clip, Adam and EMA update unless something is non-finite."""
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        lr = self.lr * lr_factor(self.step, self.total_steps, self.lr_schedule, self.warmup)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        loss, info = self.loss_fn(self.model, self.generator, self.step)
        if loss.ndim != 0:
            raise ShapeError(f"loss_fn must return a scalar loss, got shape {tuple(loss.shape)}")
        grad_norm = float("nan")
        good = bool(torch.isfinite(loss))
        if good:  # the loss value is global, so every rank takes this branch or none
            loss.backward()
            distributed.average_gradients(self.params)  # as DistributedDataParallel
            max_norm = float("inf") if self.grad_clip is None else self.grad_clip
            grad_norm = float(nn.utils.clip_grad_norm_(self.params, max_norm))
            good = math.isfinite(grad_norm)
        if good:
            self.optimizer.step()
            self._update_ema()
            self.consecutive_bad_steps = 0
        else:
            self.optimizer.zero_grad(set_to_none=True)
            self.bad_steps += 1
            self.consecutive_bad_steps += 1
        row = {"step": self.step, "loss": float(loss.detach()), "lr": lr, "grad_norm": grad_norm}
        row.update(wall_time=0.0, skipped=int(not good))
        row.update({key: float(value) for key, value in info.items()})
        self.step += 1
        return row

    def _synchronise_ranks(self) -> None:
        """Give every rank rank 0's weights and EMA (no-op in one process)."""
        tensors = list(self.model.state_dict().values()) + list(self.ema or [])
        distributed.broadcast_tensors(tensors)

    def _record(self, row: dict[str, Any], log: _CsvLog | None, bar: tqdm) -> None:
        self.history.append(row)
        if log:
            log.write(row)
        bar.update(1)
        keys = ("loss", "ess", "log_z", "n_dropped")
        shown = {key: f"{row[key]:.4g}" for key in keys if key in row}
        bar.set_postfix(shown, refresh=False)

    def _diverged_message(self) -> str:
        return (
            f"training diverged: {self.consecutive_bad_steps} consecutive steps up to step "
            f"{self.step - 1} had a non-finite loss or gradient ({self.bad_steps} skipped in "
            f"all); lower the learning rate (lr={self.lr:g}) or the gradient clip"
        )

    # ----------------------------------------------------------------------- EMA
    def _update_ema(self) -> None:
        if self.ema is None:
            return
        decay = self.ema_decay
        if self.ema_warmup:
            decay = min(decay, (1 + self.ema_updates) / (10 + self.ema_updates))
        with torch.no_grad():
            for average, param in zip(self.ema, self.params, strict=True):
                average.mul_(decay).add_(param.detach(), alpha=1 - decay)
        self.ema_updates += 1

    @contextmanager
    def ema_weights(self) -> Iterator[nn.Module]:
        """Context in which ``self.model`` carries the EMA weights (restored on exit).

        Without EMA (``ema_decay=None``) the model is left as it is.

        >>> with trainer.ema_weights() as model:  # doctest: +SKIP
        ...     samples = sample(model, 10_000)
        """
        if self.ema is None:
            yield self.model
            return
        saved = [p.detach().clone() for p in self.params]
        with torch.no_grad():
            for param, average in zip(self.params, self.ema, strict=True):
                param.copy_(average)
        try:
            yield self.model
        finally:
            with torch.no_grad():
                for param, value in zip(self.params, saved, strict=True):
                    param.copy_(value)

    def ema_model(self) -> nn.Module:
        """A copy of the model carrying the EMA weights (the model itself is untouched)."""
        with self.ema_weights() as model:
            return copy.deepcopy(model)

    # --------------------------------------------------------------- state and I/O
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue training exactly; what a checkpoint holds."""
        state = {
            "format": CHECKPOINT_FORMAT,
            "step": self.step,
            "total_steps": self.total_steps,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "schedule": {"lr": self.lr, "name": self.lr_schedule, "warmup": self.warmup},
            "ema": self.ema,
            "ema_updates": self.ema_updates,
            "generator": self.generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            "bad_steps": self.bad_steps,
            "consecutive_bad_steps": self.consecutive_bad_steps,
            "elapsed": self.elapsed,
        }
        if self.device.type == "cuda":
            state["cuda_rng"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a state from :meth:`state_dict`, including the global torch RNG."""
        if state.get("format") != CHECKPOINT_FORMAT:
            raise CheckpointError(f"trainer state has format {state.get('format')!r}, expected 1")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if (state["ema"] is None) != (self.ema is None):
            raise CheckpointError("the saved state and this trainer disagree on ema_decay=None")
        if self.ema is not None:
            with torch.no_grad():
                for average, saved in zip(self.ema, state["ema"], strict=True):
                    average.copy_(saved)
        self.ema_updates = int(state["ema_updates"])
        rng = _own_random_state(state)
        if rng["generator"] is not None:
            self.generator.set_state(rng["generator"])
            torch.set_rng_state(rng["torch_rng"])
        if "cuda_rng" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        self.step, self.total_steps = int(state["step"]), int(state["total_steps"])
        self.bad_steps = int(state["bad_steps"])
        self.consecutive_bad_steps = int(state["consecutive_bad_steps"])
        self.elapsed = float(state["elapsed"])

    def _checkpoint_path(self, step: int | None = None) -> Path:
        return self.checkpoint_dir / f"checkpoint-{self.step if step is None else step:08d}.pt"

    def _checkpoints(self) -> list[tuple[int, Path]]:
        if self.checkpoint_dir is None or not self.checkpoint_dir.is_dir():
            return []
        found = [(_CHECKPOINT_NAME.match(p.name), p) for p in self.checkpoint_dir.iterdir()]
        return sorted((int(m.group(1)), p) for m, p in found if m)

    def latest_checkpoint(self) -> Path | None:
        """The checkpoint with the highest step in ``checkpoint_dir``, or None."""
        checkpoints = self._checkpoints()
        return checkpoints[-1][1] if checkpoints else None

    def save_checkpoint(self) -> Path:
        """Write the state atomically to ``checkpoint_dir/checkpoint-<step>.pt``.

        The state goes to a temporary file in the same folder, which then replaces the
        target in one step, so a crash never leaves a half-written checkpoint behind.
        Older checkpoints beyond ``keep_checkpoints`` are removed. Under torchrun every
        rank must call it (it gathers the ranks' random states); rank 0 writes.
        """
        if self.checkpoint_dir is None:
            raise ConfigError("save_checkpoint needs a checkpoint_dir")
        path = self._checkpoint_path()
        state = self.state_dict()
        if distributed.world_size() > 1:  # a collective: every rank saves, rank 0 writes
            own = {"generator": state["generator"], "torch_rng": state["torch_rng"]}
            state["rank_rng"] = distributed.gather_objects(own)
        if distributed.is_main():
            self._write_checkpoint(state, path)
        distributed.barrier()  # no rank reads a checkpoint before rank 0 has written it
        return path

    def _write_checkpoint(self, state: dict[str, Any], path: Path) -> None:
        self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        folder = self.checkpoint_dir
        handle, tmp = tempfile.mkstemp(dir=folder, prefix=".checkpoint-", suffix=".tmp")
        try:
            with os.fdopen(handle, "wb") as file:
                torch.save(state, file)
                file.flush()
                os.fsync(file.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        for _, old in self._checkpoints()[: -self.keep_checkpoints]:
            old.unlink(missing_ok=True)

    def load_checkpoint(self, path: str | os.PathLike) -> None:
        """Restore the trainer from a checkpoint file.

        Raises
        ------
        CheckpointError
            If the file is truncated, corrupt, or saved from a different model.
        """
        path = Path(path)
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # torch raises many types for damaged files
            raise CheckpointError(
                f"checkpoint {path} is truncated or corrupt ({type(err).__name__}); "
                "delete it to resume from an earlier checkpoint or start over"
            ) from err
        if not isinstance(state, dict) or "format" not in state:
            raise CheckpointError(f"{path} is not a physsample trainer checkpoint")
        try:
            self.load_state_dict(state)
        except (RuntimeError, KeyError, ValueError) as err:
            first_line = str(err).strip().splitlines()[0] if str(err).strip() else repr(err)
            raise CheckpointError(
                f"checkpoint {path} does not match this model or trainer ({first_line}); "
                "use another checkpoint_dir or delete it"
            ) from err

    def _resume(self) -> None:
        """Load the latest checkpoint if it is ahead of the trainer's current step."""
        if self.checkpoint_dir is None:
            return
        if distributed.is_main():
            for stale in self.checkpoint_dir.glob(".checkpoint-*.tmp"):
                stale.unlink(missing_ok=True)
        checkpoints = self._checkpoints()
        if checkpoints and checkpoints[-1][0] > self.step:
            self.load_checkpoint(checkpoints[-1][1])


class _CsvLog:
    """CSV log with one row per step; rows from ``keep_before`` on are dropped on opening.

    Rows written after the last checkpoint of a killed run are dropped, so that a
    resumed run appends without duplicates. The header is the fixed columns plus the
    ``info`` keys of the first row ever written.
    """

    def __init__(self, path: Path, keep_before: int):
        self.path = path
        self.columns: list[str] | None = None
        self.writer: csv.DictWriter | None = None
        kept: list[dict[str, str]] = []
        if path.exists():
            with open(path, newline="") as file:
                reader = csv.DictReader(file)
                columns = reader.fieldnames
                kept = [row for row in reader if _complete(row) and int(row["step"]) < keep_before]
        path.parent.mkdir(parents=True, exist_ok=True)
        if kept:  # rewrite atomically, so that a kill now cannot lose the log
            self.columns = list(columns)
            handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-", suffix=".tmp")
            with os.fdopen(handle, "w", newline="") as file:
                writer = csv.DictWriter(file, self.columns)
                writer.writeheader()
                writer.writerows(kept)
            os.replace(tmp, path)
            self.file = open(path, "a", newline="")
            self._start_writer(header=False)
        else:
            self.file = open(path, "w", newline="")

    def _start_writer(self, header: bool) -> None:
        self.writer = csv.DictWriter(self.file, self.columns, extrasaction="ignore", restval="")
        if header:
            self.writer.writeheader()

    def write(self, row: dict[str, Any]) -> None:
        if self.writer is None:
            self.columns = _FIXED_COLUMNS + [key for key in row if key not in _FIXED_COLUMNS]
            self._start_writer(header=True)
        self.writer.writerow(row)
        self.file.flush()

    def close(self) -> None:
        self.file.close()


def _own_random_state(state: dict[str, Any]) -> dict[str, Any]:
    """This rank's generator and torch RNG states from a (possibly multi-rank) checkpoint.

    A checkpoint of W ranks holds each rank's states; resuming needs the same W. A
    single-process state (a saved sampler) gives its states to rank 0; the other ranks
    keep their own (freshly seeded) ones.
    """
    ranks = state.get("rank_rng")
    if ranks is not None and len(ranks) != distributed.world_size():
        raise CheckpointError(
            f"the checkpoint was written by {len(ranks)} ranks, this run has "
            f"{distributed.world_size()}; resume with the same --nproc_per_node"
        )
    if ranks is not None:
        return ranks[distributed.rank()]
    if distributed.is_main():
        return state
    return {"generator": None, "torch_rng": None}


def _complete(row: dict[str, str | None]) -> bool:
    """A row that a kill did not cut short: every column present and an integer step."""
    return None not in row and all(v is not None for v in row.values()) and row["step"].isdigit()


def _check_options(lr, lr_schedule, warmup, grad_clip, ema_decay, max_bad_steps) -> None:
    if not lr > 0:
        raise ConfigError(f"lr must be positive, got {lr}")
    if lr_schedule not in ("cosine", "constant"):
        raise ConfigError(f"lr_schedule '{lr_schedule}' is not known; use cosine or constant")
    if warmup < 0:
        raise ConfigError(f"warmup must be non-negative, got {warmup}")
    if grad_clip is not None and not grad_clip > 0:
        raise ConfigError(f"grad_clip must be positive or None, got {grad_clip}")
    if ema_decay is not None and not 0 <= ema_decay < 1:
        raise ConfigError(f"ema_decay must be in [0, 1) or None, got {ema_decay}")
    if max_bad_steps < 1:
        raise ConfigError(f"max_bad_steps must be at least 1, got {max_bad_steps}")
