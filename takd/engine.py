"""DeepSpeed engine for the student: process-group start-up, the config (one source of truth), the engine.

The JSON files in `configs/deepspeed/` hold only the ZeRO settings; micro-batch, accumulation, clipping and
precision are injected from the stage config so they cannot disagree. The client optimizer is torch's AdamW
(no JIT-compiled op) and the client scheduler our LambdaLR, so DeepSpeed steps exactly what the single-process
trainer steps. Supported here: ZeRO-1 and ZeRO-2 (a full copy of the weights on every rank, so generation,
validation and HF export run on rank 0 alone). ZeRO-3 needs synchronised generation and gathered exports
and is refused with a message until it lands.
"""

from __future__ import annotations

import importlib
import json
import os
from typing import Any

import torch
import torch.distributed as dist

from takd import distributed
from takd.config import ConfigError
from takd.paths import CONFIG_DIR


def init_process_group() -> None:
    """Join the default process group (gloo on CPU, nccl on GPU) through DeepSpeed, once."""
    if dist.is_available() and dist.is_initialized():
        return
    import deepspeed

    if not torch.cuda.is_available():
        # DeepSpeed's CPU backend JIT-compiles a shared-memory allreduce (30-40 s, rebuilt whenever the ninja on
        # PATH changes); gloo's allreduce is correct and enough for CPU runs and tests.
        importlib.import_module("deepspeed.comm.torch").build_shm_op = lambda: None
    os.environ.setdefault("LOCAL_RANK", str(distributed.local_rank()))
    deepspeed.init_distributed(dist_backend=None)


def deepspeed_config(cfg) -> dict[str, Any]:
    """configs/deepspeed/zero<stage>.json + the values that belong to the stage config."""
    ds = cfg.deepspeed
    if ds.zero_stage == 3:
        raise ConfigError("deepspeed.zero_stage=3 is not supported yet (needs synchronised generation and gathered "
                          "HF export); use zero_stage 1 or 2")
    name = f"zero{ds.zero_stage}{'_offload' if ds.offload_optimizer else ''}.json"
    path = CONFIG_DIR / "deepspeed" / name
    if not path.is_file():
        raise ConfigError(f"no DeepSpeed config {path} for zero_stage={ds.zero_stage}, "
                          f"offload_optimizer={ds.offload_optimizer}")
    conf = json.loads(path.read_text())
    conf.update({
        "train_micro_batch_size_per_gpu": cfg.micro_batch_size,
        "gradient_accumulation_steps": cfg.grad_accum_steps,
        "gradient_clipping": cfg.optim.grad_clip_norm,
        "bf16": {"enabled": cfg.dtype == "bfloat16"},
        "fp16": {"enabled": cfg.dtype == "float16", "initial_scale_power": 11, "loss_scale_window": 2000,
                 "hysteresis": 4},  # the reference's fp16 settings (reference §4)
    })
    return conf


def build_engine(model: torch.nn.Module, optimizer, scheduler, cfg):
    """The student wrapped as a DeepSpeed engine around our optimizer and schedule."""
    import deepspeed

    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler,
                                           config=deepspeed_config(cfg))
    return engine


def all_reduce_sum(values: list[float]) -> list[float]:
    """Sum a few floats over all ranks (identity in a single process)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=distributed.device())
    dist.all_reduce(t)
    return t.tolist()


def barrier() -> None:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()
