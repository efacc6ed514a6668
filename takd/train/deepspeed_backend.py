"""The student as a DeepSpeed engine: process-group start-up, the DeepSpeed config (one source of truth), ZeRO-1/2/3,
a replicated or ZeRO-3-sharded teacher, gathered generation and consolidated exports.

The JSON files in `configs/deepspeed/` hold only the ZeRO settings; micro-batch, accumulation, clipping and
precision are injected from the stage config so they cannot disagree. The client optimizer is torch's AdamW
(no JIT-compiled op) and the client scheduler our LambdaLR, so DeepSpeed steps exactly what the single-process
backend steps.

ZeRO-1/2 keep a full copy of the weights on every rank. Under ZeRO-3 each rank holds 1/N of every parameter and
every forward is a collective (parameters are all-gathered layer by layer), so: the model is built partitioned
from the start (`partitioned_loading`, transformers' zero.Init path: a 13B model never sits whole in one
process), every rank runs every forward in lockstep (generation with `synced_gpus`, the teacher-mixed sampler
with its own stop sync), and HF exports gather the weights into rank 0.

The teacher is either `replicated` (a plain frozen module per rank) or `zero3`: an inference-only ZeRO-3 engine
(no optimizer, no gradients) whose weights are sharded like the student's.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed as tdist

from takd import dist
from takd.config import ConfigError
from takd.models.loading import load_model
from takd.paths import CONFIG_DIR
from takd.train.backend import Backend, build_optimizer
from takd.train.config import StageConfig, accumulation_steps


def init_process_group() -> None:
    """Join the default process group (gloo on CPU, nccl on GPU) through DeepSpeed, once."""
    if tdist.is_available() and tdist.is_initialized():
        return
    import deepspeed

    if not torch.cuda.is_available():
        # DeepSpeed's CPU backend JIT-compiles a shared-memory allreduce (30-40 s, rebuilt whenever the ninja on
        # PATH changes); gloo's allreduce is correct and enough for CPU runs and tests.
        importlib.import_module("deepspeed.comm.torch").build_shm_op = lambda: None
    os.environ.setdefault("LOCAL_RANK", str(dist.local_rank()))
    deepspeed.init_distributed(dist_backend=None)


def deepspeed_config(cfg: StageConfig, world: int) -> dict[str, Any]:
    """configs/deepspeed/zero<stage>[_offload].json + the values that belong to the stage config (on `world`
    processes)."""
    ds = cfg.deepspeed
    name = f"zero{ds.zero_stage}{'_offload' if ds.offload_optimizer else ''}.json"
    path = CONFIG_DIR / "deepspeed" / name
    if not path.is_file():
        raise ConfigError(f"no DeepSpeed config {path} for zero_stage={ds.zero_stage}, "
                          f"offload_optimizer={ds.offload_optimizer}")
    conf = json.loads(path.read_text())
    conf.update({
        "train_micro_batch_size_per_gpu": cfg.micro_batch_size,
        "gradient_accumulation_steps": accumulation_steps(cfg, world),
        "gradient_clipping": cfg.optim.grad_clip_norm,
        "bf16": {"enabled": cfg.dtype == "bfloat16"},
        "fp16": {"enabled": cfg.dtype == "float16", "initial_scale_power": 11, "loss_scale_window": 2000,
                 "hysteresis": 4},  # the reference's fp16 settings (reference §4)
    })
    return conf


def teacher_config(cfg: StageConfig, world: int) -> dict[str, Any]:
    """Inference-only ZeRO-3 for a sharded teacher: no optimizer, the student's precision and batch keys."""
    conf = json.loads((CONFIG_DIR / "deepspeed" / "zero3.json").read_text())
    conf.update({k: v for k, v in deepspeed_config(cfg, world).items()
                 if k in ("train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "bf16", "fp16")})
    return conf


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


def build_teacher_engine(model: torch.nn.Module, cfg: StageConfig, world: int):
    """The teacher as an inference-only ZeRO-3 engine; forwards go through the module (the engine's hooks
    gather each layer's weights on the way)."""
    import deepspeed

    engine, _, _, _ = deepspeed.initialize(model=model, config=teacher_config(cfg, world))
    engine.eval()
    return engine


class DeepSpeedBackend(Backend):
    """The student as a DeepSpeed engine on every process (ZeRO-1/2/3, optionally with the optimizer offloaded)."""

    def __init__(self, cfg: StageConfig):
        super().__init__(cfg)
        self.ds_config = deepspeed_config(cfg, self.world)  # bad settings fail before any work
        self.zero3 = cfg.deepspeed.zero_stage == 3
        self.teacher_sharded = cfg.deepspeed.teacher_placement == "zero3"
        # a forward of a sharded model is a collective: every rank must run every forward, in the same order
        self.lockstep = self.zero3 or self.teacher_sharded
        init_process_group()

    def load_student(self, source: str) -> torch.nn.Module:
        with partitioned_loading(self.ds_config):  # a no-op unless ZeRO-3
            self.module = load_model(source, self.dtype)
        if not self.zero3:  # zero.Init already placed the shards
            self.module.to(self.device)
        return self._checkpointed(self.module)

    def load_teacher(self, source: str) -> torch.nn.Module:
        if not self.teacher_sharded:
            return super().load_teacher(source)
        with partitioned_loading(teacher_config(self.cfg, self.world)):
            teacher = load_model(source, self.dtype).requires_grad_(False)
        self.teacher_engine = build_teacher_engine(teacher, self.cfg, self.world)  # holds the shards and gather hooks
        return teacher.eval()

    def prepare(self, student: torch.nn.Module, total_steps: int) -> None:
        import deepspeed

        optimizer, self.scheduler = build_optimizer(student, self.cfg, total_steps)
        self.engine, _, _, _ = deepspeed.initialize(model=student, optimizer=optimizer, lr_scheduler=self.scheduler,
                                                    config=self.ds_config)

    def train_forward(self, **inputs):
        # Through the engine: ZeRO-3 counts accumulation micro-steps in its forward, and without that count each
        # micro-batch's gradient would replace the previous one instead of adding to it.
        return self.engine(**inputs)

    def backward(self, loss: torch.Tensor) -> None:
        # the engine divides by the accumulation steps itself (and averages over ranks); optimizer, schedule and
        # clipping happen inside `engine.step()` at the accumulation boundary
        self.engine.backward(loss * self.accum)
        self.engine.step()

    def step(self) -> float | None:
        norm = self.engine.get_global_grad_norm()
        return None if norm is None else float(norm)

    def generating(self) -> contextlib.AbstractContextManager:
        """While open, a ZeRO-3 student's weights are whole on every rank and its gather hooks are off, so decoding
        runs local forwards (DeepSpeed's `unwrap_model_for_generation`). Collective on entry and exit."""
        if not (self.zero3 and self.cfg.deepspeed.gather_for_generation):
            return contextlib.nullcontext()
        from deepspeed.runtime.zero import unwrap_model_for_generation

        return unwrap_model_for_generation(self.engine)

    def save_state(self, directory: Path) -> None:
        """Collective: every rank writes its optimizer (and, under ZeRO-3, weight) shards."""
        self.engine.save_checkpoint(str(Path(directory) / "ds"), tag="state", save_latest=False)

    def load_state(self, directory: Path) -> None:
        self.engine.load_checkpoint(str(Path(directory) / "ds"), tag="state")

    def full_state_dict(self) -> dict[str, torch.Tensor] | None:
        """Collective under ZeRO-3 (rank 0 gets the tensors gathered layer by layer, the others None)."""
        if self.zero3:
            state = self.engine._zero3_consolidated_16bit_state_dict()
            return state if self.rank == 0 else None
        return self.module.state_dict()

    def parameter_count(self) -> int:
        """Also when ZeRO-3 has partitioned the parameters (ds_numel is the full size)."""
        return sum(getattr(p, "ds_numel", p.numel()) for p in self.module.parameters())

    def describe(self) -> str:
        ds = self.cfg.deepspeed
        return (f", DeepSpeed ZeRO-{ds.zero_stage}{' (optimizer offloaded)' if ds.offload_optimizer else ''} on "
                f"{self.world} process(es)")
