"""The one place that knows about processes and devices: rank, world size, local rank, device.

Sources, in order: torchrun/`TorchDistributedEnvironment().export()` variables (RANK, WORLD_SIZE, LOCAL_RANK),
then Slurm's (SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID), then a single process. No other module reads these.
"""

from __future__ import annotations

import os

import torch


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
