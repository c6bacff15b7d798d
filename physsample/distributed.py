"""Data-parallel training over processes launched by ``torchrun`` (torch.distributed).

Each of the W ranks simulates ``batch_size / W`` trajectories with its own generator;
the losses are computed over the GLOBAL batch, so that W ranks with B / W trajectories
each take exactly the step that one process takes with the B trajectories together:

- the detached log-weights are all-gathered (B floats), so the drop mask (distance to
  the global median), the global mean of log w, the number of usable trajectories and
  the progress-bar statistics (ESS, log Z, ``n_dropped``) are those of the global batch;
- each rank's loss is W times its own share ``sum_{i in rank} (log w_i - mean)^2 / (n - 1)``
  of the global log-variance (the mean held fixed: the gradient of the variance through
  the mean is ``sum_i (log w_i - mean) = 0``), with its value replaced by the global one;
- after ``backward`` the trainer AVERAGES the gradients over ranks
  (:func:`average_gradients`, as DistributedDataParallel does), which gives the
  single-process gradient: (1 / W) sum_r W grad(share_r) = grad(global loss).

Averaging makes any other loss that is a mean over the rank's own batch (the score
matching of LRDS's score reference, GMP's KL) the loss of the W-times larger batch.
With ``n_grad_steps`` each rank draws its own random time steps: the gradient stays
unbiased but is no longer the one of a single process.

The gradients are reduced by hand, once per step, rather than by a
``DistributedDataParallel`` wrapper: a training step calls the control network many
times (the rollout, then the chunked recomputation of the log-weight gradient inside a
custom autograd function), outside DDP's one-forward-one-backward contract. The
reduction is the same all-reduce of the gradients that DDP does, in one flat buffer.

Without an initialised process group every function here is the identity (world size 1),
so the library behaves exactly as before in a single process.

Launch::

    torchrun --standalone --nproc_per_node=2 -m physsample stage=train device=cpu

or from Python, inside each rank: ``physsample.distributed.init_from_env(device)``.
"""

from __future__ import annotations

import datetime
import math
import os
import sys

import torch
import torch.distributed as dist

from physsample.diffusion.losses import log_variance_loss, reverse_kl_loss, usable_mask
from physsample.errors import ConfigError

__all__ = [
    "is_initialized",
    "world_size",
    "rank",
    "local_rank",
    "is_main",
    "launched_by_torchrun",
    "init_from_env",
    "shutdown",
    "barrier",
    "rank_device",
    "rank_seed",
    "local_batch_size",
    "gather",
    "all_reduce_sum",
    "average_gradients",
    "broadcast_tensors",
    "gather_objects",
    "local_slice",
    "with_global_value",
    "global_log_variance_loss",
    "global_reverse_kl_loss",
]

# Odd 64-bit constant (golden ratio) that spreads the ranks' seeds apart.
_SEED_STRIDE = 0x9E3779B97F4A7C15


def is_initialized() -> bool:
    """True inside an initialised torch.distributed process group."""
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    """Number of ranks (1 without a process group)."""
    return dist.get_world_size() if is_initialized() else 1


def rank() -> int:
    """This process's rank (0 without a process group)."""
    return dist.get_rank() if is_initialized() else 0


def local_rank() -> int:
    """This process's rank on its node (``LOCAL_RANK`` set by torchrun, else 0)."""
    return int(os.environ.get("LOCAL_RANK", 0))


def is_main() -> bool:
    """True on rank 0, the rank that prints and writes files."""
    return rank() == 0


def launched_by_torchrun() -> bool:
    """True when torchrun's variables say there are several ranks (``WORLD_SIZE > 1``).

    A one-node SLURM job step with several tasks (``srun``, or the submitit launcher with
    ``tasks_per_node > 1``) counts too: its variables are translated to torchrun's.
    """
    _env_from_slurm()
    return int(os.environ.get("WORLD_SIZE", 1)) > 1


def _env_from_slurm() -> None:
    """Set RANK, LOCAL_RANK, WORLD_SIZE and MASTER_* from a one-node SLURM task's variables."""
    env = os.environ
    if "WORLD_SIZE" in env or "SLURM_PROCID" not in env or int(env.get("SLURM_NTASKS", 1)) < 2:
        return
    if int(env.get("SLURM_NNODES", 1)) > 1:
        raise ConfigError(
            "data-parallel training over several SLURM nodes: start one torchrun per node "
            "(torchrun --nnodes=<n> --rdzv-backend=c10d --rdzv-endpoint=<host>:29500 ...)"
        )
    port = 20000 + int(env.get("SLURM_JOB_ID", 0)) % 20000
    env.update(RANK=env["SLURM_PROCID"], LOCAL_RANK=env.get("SLURM_LOCALID", env["SLURM_PROCID"]))
    env.update(WORLD_SIZE=env["SLURM_NTASKS"], MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))


def init_from_env(device: str | torch.device = "cpu", backend: str | None = None) -> bool:
    """Join the process group that torchrun describes in the environment.

    Parameters
    ----------
    device
        The training device: ``nccl`` is the backend for CUDA, ``gloo`` for the CPU; on
        CUDA each rank uses GPU ``LOCAL_RANK``.
    backend
        Override the backend.

    Returns
    -------
    bool
        True if a group with more than one rank is (now) initialised; False when not
        launched by torchrun (a single process: nothing to do).
    """
    if is_initialized():
        return world_size() > 1
    if not launched_by_torchrun():
        return False
    missing = [k for k in ("RANK", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise ConfigError(
            f"WORLD_SIZE is set but {', '.join(missing)} is not; launch with torchrun"
        )
    is_cuda = torch.device(device).type == "cuda" or (
        str(device) == "auto" and torch.cuda.is_available()
    )
    if is_cuda:
        torch.cuda.set_device(local_rank())
    # long: under the CLI the other ranks wait while rank 0 runs the MCMC stage
    timeout = datetime.timedelta(hours=6)
    dist.init_process_group(backend or ("nccl" if is_cuda else "gloo"), timeout=timeout)
    return True


def shutdown(exit_process: bool = False) -> None:
    """Leave the process group (if any), after a barrier.

    With ``exit_process``, a process that was in a group then ends at once, exit code 0,
    its output flushed: at interpreter teardown the gloo / store background threads can
    abort a rank that has finished all its work ("terminate called without an active
    exception", exit code 134), a race seen on a loaded machine.
    """
    if not is_initialized():
        return
    barrier()
    dist.destroy_process_group()
    if exit_process:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


def barrier() -> None:
    """Wait for every rank (no-op in one process)."""
    if world_size() > 1:
        dist.barrier()


def rank_device(device: torch.device) -> torch.device:
    """``cuda`` without an index becomes this rank's GPU ``cuda:LOCAL_RANK``."""
    if world_size() > 1 and device.type == "cuda" and device.index is None:
        return torch.device("cuda", local_rank())
    return device


def rank_seed(seed: int) -> int:
    """This rank's seed: ``seed`` on rank 0 (so one rank is a plain run), spread apart on others."""
    return (int(seed) + rank() * _SEED_STRIDE) % 2**63


def local_batch_size(batch_size: int) -> int:
    """Trajectories this rank simulates: ``batch_size / world_size``.

    Raises
    ------
    ConfigError
        If the batch does not split evenly.
    """
    w = world_size()
    if batch_size % w or batch_size // w < 1:
        raise ConfigError(
            f"batch_size={batch_size} must be a multiple of the number of ranks ({w}); "
            "batch_size is the global batch, split evenly between ranks"
        )
    return batch_size // w


def gather(values: torch.Tensor) -> torch.Tensor:
    """The ranks' tensors (same shape on every rank) concatenated along dim 0, rank order."""
    if world_size() == 1:
        return values
    parts = [torch.empty_like(values) for _ in range(world_size())]
    dist.all_gather(parts, values.contiguous())
    return torch.cat(parts)


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """Sum over ranks, in place and returned."""
    if world_size() > 1:
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def average_gradients(params: list[torch.Tensor]) -> None:
    """Average ``p.grad`` over ranks, in one flat buffer (a missing gradient counts as zero)."""
    if world_size() == 1 or not params:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = all_reduce_sum(torch.cat([g.reshape(-1) for g in grads])) / world_size()
    offset = 0
    for p in params:
        n = p.numel()
        p.grad = flat[offset : offset + n].view_as(p).clone()
        offset += n


def broadcast_tensors(tensors: list[torch.Tensor], src: int = 0) -> None:
    """Copy ``src``'s values of ``tensors`` to every rank, in place."""
    if world_size() == 1:
        return
    with torch.no_grad():
        for t in tensors:
            if t.is_contiguous():
                dist.broadcast(t, src)
            else:
                tmp = t.contiguous()
                dist.broadcast(tmp, src)
                t.copy_(tmp)


def gather_objects(obj) -> list:
    """Every rank's picklable ``obj``, in rank order (``[obj]`` in one process)."""
    if world_size() == 1:
        return [obj]
    out = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def local_slice(n_local: int) -> slice:
    """This rank's rows of a gathered tensor, when every rank holds ``n_local`` rows."""
    return slice(rank() * n_local, (rank() + 1) * n_local)


def with_global_value(share: torch.Tensor) -> torch.Tensor:
    """Value: the sum of the ranks' shares; gradient: W times this rank's share's.

    ``share`` is this rank's part of a loss that is a sum over the global batch.

    Averaged over the ranks (:func:`average_gradients`), the gradients sum the shares'.
    """
    total = all_reduce_sum(share.detach().clone())
    scaled = share * world_size()
    return scaled + (total - scaled.detach())


def global_log_variance_loss(
    log_w: torch.Tensor, *, max_deviation: float | None
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """:func:`~physsample.diffusion.log_variance_loss` over the batch of all ranks.

    Every rank passes its own (B / W,) log-weights. The returned loss has the value of
    the global loss on every rank; its gradient is W times this rank's share's, so that
    the AVERAGE of the ranks' gradients is the gradient of the global loss. ``info``
    (used and dropped counts) is global. In one process this is ``log_variance_loss``.
    """
    if world_size() == 1:
        return log_variance_loss(log_w, max_deviation=max_deviation)
    everything = gather(log_w.detach())
    mask_all, info = usable_mask(everything, max_deviation)
    mask = mask_all[local_slice(log_w.shape[0])]
    n = info["n_used"].to(log_w.dtype)
    mean = torch.where(mask_all, everything, torch.zeros_like(everything)).sum() / n
    kept = torch.where(mask, log_w, torch.zeros_like(log_w))
    sq = torch.where(mask, (kept - mean) ** 2, torch.zeros_like(log_w))
    return with_global_value(sq.sum() / (n - 1)), info


def global_reverse_kl_loss(
    log_w: torch.Tensor, *, max_deviation: float | None
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """:func:`~physsample.diffusion.reverse_kl_loss` over the batch of all ranks (as above)."""
    if world_size() == 1:
        return reverse_kl_loss(log_w, max_deviation=max_deviation)
    mask_all, info = usable_mask(gather(log_w.detach()), max_deviation)
    mask = mask_all[local_slice(log_w.shape[0])]
    n = info["n_used"].to(log_w.dtype)
    loss = with_global_value(-torch.where(mask, log_w, torch.zeros_like(log_w)).sum() / n)
    return torch.where(n >= 2, loss, torch.full_like(loss, math.nan)), info
