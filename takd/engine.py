"""DeepSpeed engine for the student: process-group start-up, the config (one source of truth), the engine.

The JSON files in `configs/deepspeed/` hold only the ZeRO settings; micro-batch, accumulation, clipping and
precision are injected from the stage config so they cannot disagree. The client optimizer is torch's AdamW
(no JIT-compiled op) and the client scheduler our LambdaLR, so DeepSpeed steps exactly what the single-process
trainer steps.

ZeRO-1/2 keep a full copy of the weights on every rank. Under ZeRO-3 each rank holds 1/N of every parameter and
every forward is a collective (parameters are all-gathered layer by layer), so: the model is built partitioned
from the start (`partitioned_loading`, transformers' zero.Init path: a 13B model never sits whole in one
process), every rank runs every forward in lockstep (generation with `synced_gpus`, the teacher-mixed sampler
with its own stop sync), and HF exports gather the weights into rank 0 (`consolidated_state_dict`).

The teacher is either `replicated` (a plain frozen module per rank) or `zero3`: an inference-only ZeRO-3 engine
(no optimizer, no gradients) whose weights are sharded like the student's.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
from collections.abc import Iterator
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
    """configs/deepspeed/zero<stage>[_offload].json + the values that belong to the stage config."""
    ds = cfg.deepspeed
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


def teacher_config(cfg) -> dict[str, Any]:
    """Inference-only ZeRO-3 for a sharded teacher: no optimizer, the student's precision and batch keys."""
    conf = json.loads((CONFIG_DIR / "deepspeed" / "zero3.json").read_text())
    conf.update({k: v for k, v in deepspeed_config(cfg).items()
                 if k in ("train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "bf16", "fp16")})
    return conf


def is_zero3(cfg) -> bool:
    return cfg.deepspeed.zero_stage == 3


@contextlib.contextmanager
def partitioned_loading(ds_config: dict[str, Any] | None) -> Iterator[None]:
    """While open, `from_pretrained` builds the model already partitioned for ZeRO-3 (transformers' zero.Init path)
    and loads each weight into its shards. A no-op for `None` (ZeRO-1/2, replicated teacher)."""
    if ds_config is None or ds_config["zero_optimization"]["stage"] != 3:
        yield
        return
    from transformers.integrations import HfDeepSpeedConfig
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    hf_ds = HfDeepSpeedConfig(ds_config)  # noqa: F841  (transformers holds a weak reference: keep it alive here)
    try:
        yield
    finally:
        # closed again so that later loads (verifying an export, a replicated teacher) are plain loads
        del hf_ds
        unset_hf_deepspeed_config()


def build_engine(model: torch.nn.Module, optimizer, scheduler, cfg):
    """The student wrapped as a DeepSpeed engine around our optimizer and schedule."""
    import deepspeed

    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler,
                                           config=deepspeed_config(cfg))
    return engine


def build_teacher_engine(model: torch.nn.Module, cfg):
    """The teacher as an inference-only ZeRO-3 engine; forwards go through the module (the engine's hooks
    gather each layer's weights on the way)."""
    import deepspeed

    engine, _, _, _ = deepspeed.initialize(model=model, config=teacher_config(cfg))
    engine.eval()
    return engine


def gathered_for_generation(engine, enabled: bool = True) -> contextlib.AbstractContextManager:
    """While open, a ZeRO-3 student's weights are whole on every rank and its gather hooks are off, so decoding runs
    local forwards (DeepSpeed's `unwrap_model_for_generation`). Collective on entry and exit; a no-op otherwise."""
    if not enabled or engine is None or not engine.zero_optimization_partition_weights():
        return contextlib.nullcontext()
    from deepspeed.runtime.zero import unwrap_model_for_generation

    return unwrap_model_for_generation(engine)


def parameter_count(model: torch.nn.Module) -> int:
    """Parameters of the whole model, also when ZeRO-3 has partitioned them (ds_numel is the full size)."""
    return sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters())


def consolidated_state_dict(engine, module: torch.nn.Module) -> dict[str, torch.Tensor] | None:
    """The full weights, for an HF export. Collective under ZeRO-3 (every rank must call it; rank 0 gets the
    gathered tensors, the others None); otherwise the module's own state dict."""
    if engine is not None and engine.zero_optimization_partition_weights():
        state = engine._zero3_consolidated_16bit_state_dict()  # gathers layer by layer into rank 0's CPU memory
        return state if distributed.rank() == 0 else None
    return module.state_dict()


def _multi_process() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_reduce_sum(values: list[float]) -> list[float]:
    """Sum a few floats over all ranks (identity in a single process)."""
    if not _multi_process():
        return values
    t = torch.tensor(values, dtype=torch.float64, device=distributed.device())
    dist.all_reduce(t)
    return t.tolist()


def shutdown() -> None:
    """Leave the process group together (barrier, then destroy). Without it a rank can exit while gloo/NCCL threads
    still serve a peer, and the runtime aborts that process at exit (SIGABRT), failing a finished job."""
    if dist.is_available() and dist.is_initialized():
        barrier()
        dist.destroy_process_group()


def barrier() -> None:
    if _multi_process():
        dist.barrier()


def all_gather_objects(obj: Any) -> list[Any]:
    """Every rank's `obj` (picklable), in rank order; [obj] in a single process."""
    if not _multi_process():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def all_true(flag: bool) -> bool:
    """True when `flag` holds on every rank (the stop test of lockstep loops)."""
    if not _multi_process():
        return flag
    t = torch.tensor([int(flag)], device=distributed.device())
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return bool(t.item())
