"""The one place that knows about processes and devices: rank, world size, local rank, device, and the few
collectives takd uses (each an identity in a single process).

Sources, in order: torchrun/`TorchDistributedEnvironment().export()` variables (RANK, WORLD_SIZE, LOCAL_RANK),
then Slurm's (SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID), then a single process. No other module reads these.
Collectives are passed into the pure math (e.g. `whiten(x, all_reduce=dist.all_reduce_tensor)`), never hidden in it.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as tdist


def _env_int(*names: str, default: int) -> int:
    for n in names:
        if os.environ.get(n, "").strip().isdigit():
            return int(os.environ[n])
    return default


def rank() -> int:
    return _env_int("RANK", "SLURM_PROCID", default=0)


def world_size() -> int:
    return _env_int("WORLD_SIZE", "SLURM_NTASKS", default=1)


def local_rank() -> int:
    return _env_int("LOCAL_RANK", "SLURM_LOCALID", default=0)


def is_main() -> bool:
    return rank() == 0


def export_slurm_task_env() -> None:
    """Inside a multi-task Slurm job, expose RANK/WORLD_SIZE/MASTER_* for torch.distributed (no-op otherwise)."""
    if "SLURM_JOB_ID" in os.environ and int(os.environ.get("SLURM_NTASKS", "1")) > 1 and "RANK" not in os.environ:
        import submitit

        submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)


def device() -> torch.device:
    """cuda:<local rank> when CUDA is available (one process per GPU), else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", local_rank() % torch.cuda.device_count())
    return torch.device("cpu")


def to_device(batch: dict, dev: torch.device) -> dict:
    return {k: v.to(dev, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def padded_shard(items: list, rank_: int, world: int) -> tuple[list, int]:
    """Rank `rank_`'s contiguous share of `items`, padded with copies of an item to ⌈N/W⌉ entries, and how many of
    them are real. Every rank then runs the same number of equal batches, which lockstep (ZeRO-3) forwards need;
    results of the padding entries are dropped by the caller."""
    if not items:
        return [], 0
    per = -(-len(items) // world)
    shard = items[rank_ * per: (rank_ + 1) * per]
    real = len(shard)
    filler = shard[-1] if shard else items[-1]
    return shard + [filler] * (per - real), real


# ------------------------------------------------------------------------------------------------ collectives
def multi_process() -> bool:
    return tdist.is_available() and tdist.is_initialized() and tdist.get_world_size() > 1


def all_reduce_sum(values: list[float]) -> list[float]:
    """Sum a few floats over all ranks (identity in a single process)."""
    if not multi_process():
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device())
    tdist.all_reduce(t)
    return t.tolist()


def all_reduce_tensor(t: torch.Tensor) -> torch.Tensor:
    """Sum of `t` over all ranks, in place and returned (identity in a single process)."""
    if multi_process():
        tdist.all_reduce(t)
    return t


def all_gather_objects(obj: Any) -> list[Any]:
    """Every rank's `obj` (picklable), in rank order; [obj] in a single process."""
    if not multi_process():
        return [obj]
    out: list[Any] = [None] * tdist.get_world_size()
    tdist.all_gather_object(out, obj)
    return out


def all_true(flag: bool) -> bool:
    """True when `flag` holds on every rank (the stop test of lockstep loops)."""
    if not multi_process():
        return flag
    t = torch.tensor([int(flag)], device=device())
    tdist.all_reduce(t, op=tdist.ReduceOp.MIN)
    return bool(t.item())


def any_true(flag: bool) -> bool:
    """True when `flag` holds on some rank."""
    return not all_true(not flag)


def barrier() -> None:
    if multi_process():
        tdist.barrier()


def shutdown() -> None:
    """Leave the process group together (barrier, then destroy). Without it a rank can exit while gloo/NCCL threads
    still serve a peer, and the runtime aborts that process at exit (SIGABRT), failing a finished job."""
    if tdist.is_available() and tdist.is_initialized():
        barrier()
        tdist.destroy_process_group()
