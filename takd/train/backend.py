"""The backend seam: how the student is placed, run, stepped and saved. `create_backend` is the one place that
decides between plain torch in one process (`TorchBackend`) and a DeepSpeed engine (`DeepSpeedBackend`: several
processes, or `deepspeed.enabled`); the loop and the methods only talk to the `Backend` interface.

    backend.load_student(source)   the student, on this process's device (partitioned under ZeRO-3)
    backend.load_teacher(source)   the frozen teacher (replicated, or an inference-only ZeRO-3 engine)
    backend.prepare(student, n)    optimizer and schedule over n steps (and the engine around them)
    backend.train_forward(**batch) a training forward (the engine counts accumulation micro-steps in it)
    backend.backward(loss)         back-propagate one micro-batch's share of the step's loss
    backend.step()                 clip, optimizer step, schedule: the optimizer step; returns the gradient norm
    backend.module                 the student module for no-grad work (validation, generation, export)
    backend.compute()              context for any other student forward (the stage's precision)
    backend.generating()           context for decoding (ZeRO-3: the student gathered whole when configured)
    backend.save_state(dir) / load_state(dir)   optimizer + schedule (collective under DeepSpeed)
    backend.full_state_dict()      the student's master weights, for a checkpoint (collective under ZeRO-3)
    backend.export_state_dict()    its weights in the stage's dtype, for a hand-off (collective under ZeRO-3)

Precision: `dtype: bfloat16 | float16` means half-precision *compute* with float32 master weights and optimizer
states, on both paths. One process: the student stays float32 and its forwards run under `torch.autocast` (float16
with a dynamic loss scale, `torch.amp.GradScaler`); chosen over a one-GPU DeepSpeed engine because it needs no
process group, keeps torch's own AdamW and exact resume from the float32 weights, and costs no more (16 B/param of
fp32 weights, gradients and moments, against DeepSpeed's 20 on one GPU, which the planner's estimate assumes).
DeepSpeed: its bf16/fp16 engine (fp32 master partitions in the optimizer; fp16 with the reference's dynamic loss
scaling). The frozen teacher runs in the stage dtype. Checkpoints hold the master weights; `best/` and
`final/` are written in the stage dtype.
"""

from __future__ import annotations

import contextlib
import math
from pathlib import Path

import torch

from takd import dist
from takd.config import ConfigError
from takd.models.loading import load_model
from takd.train.config import OptimConfig, StageConfig, accumulation_steps, uses_gradient_checkpointing

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
OPTIMIZER_FILE = "optimizer.pt"


def lr_factor(step: int, cfg_optim: OptimConfig, total_steps: int) -> float:
    """Multiplier of the peak lr at optimizer step `step` (0-based): linear warmup, then constant or cosine.

    warmup: step/warmup_steps, so the first step runs at lr 0, as the reference's schedules (transformers'
    get_{constant,cosine}_schedule_with_warmup); cosine: min_lr + (lr − min_lr)·½(1 + cos(π·progress)),
    progress = (step − warmup)/(total − warmup) ∈ [0, 1] (with no warmup: torch's CosineAnnealingLR to min_lr).
    """
    if step < cfg_optim.warmup_steps:
        return step / cfg_optim.warmup_steps
    if cfg_optim.schedule == "constant":
        return 1.0
    progress = (step - cfg_optim.warmup_steps) / max(1, total_steps - cfg_optim.warmup_steps)
    lr = cfg_optim.min_lr + (cfg_optim.lr - cfg_optim.min_lr) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return lr / cfg_optim.lr


def vector_like(module: torch.nn.Module) -> set[int]:
    """ids of the parameters whose Adam step size should not shrink with width (muP, Tensor Programs V, Table 3):
    embedding tables (token and position) and every parameter with fewer than 2 dimensions (biases, norm gains).
    A tied LM head is the token table itself, so it follows it. Shapes are read through ZeRO-3's `ds_shape`, as a
    partitioned parameter's own tensor is empty."""
    ids = {id(p) for m in module.modules() if isinstance(m, torch.nn.Embedding) for p in m.parameters()}
    return ids | {id(p) for p in module.parameters() if len(getattr(p, "ds_shape", p.shape)) < 2}


def parameter_groups(module: torch.nn.Module, o: OptimConfig) -> list[dict]:
    """One group at `o.lr`, or with `o.vector_lr` set, the vector-like parameters in a second group at that rate."""
    params = [p for p in module.parameters() if p.requires_grad]
    if o.vector_lr is None:
        return [{"params": params, "lr": o.lr}]
    vectors = vector_like(module)
    return [{"params": [p for p in params if id(p) not in vectors], "lr": o.lr},
            {"params": [p for p in params if id(p) in vectors], "lr": o.vector_lr}]


def build_optimizer(module: torch.nn.Module, cfg: StageConfig, total_steps: int
                    ) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """torch AdamW (no JIT-compiled op) and our schedule over `total_steps` optimizer steps: what both backends step.
    The schedule multiplies each parameter group's own peak rate by the same factor."""
    o = cfg.optim
    optimizer = torch.optim.AdamW(parameter_groups(module, o), lr=o.lr, betas=(o.beta1, o.beta2), eps=o.eps,
                                  weight_decay=o.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, o, total_steps))
    return optimizer, scheduler


class Backend:
    """The interface the loop and the methods use (see the module docstring)."""

    lockstep = False  # every forward is a collective: ranks must run every forward, in the same order
    teacher_sharded = False  # the teacher is an inference-only ZeRO-3 engine
    checkpointing = False  # the student's activations are recomputed in the backward pass

    def __init__(self, cfg: StageConfig):
        self.cfg = cfg
        self.rank, self.world = dist.rank(), dist.world_size()
        self.accum = accumulation_steps(cfg, self.world)  # micro-batches per optimizer step on this process
        self.device = dist.device()
        self.dtype = DTYPES[cfg.dtype]
        self.module: torch.nn.Module | None = None

    def load_student(self, source: str) -> torch.nn.Module:
        raise NotImplementedError

    def _checkpointed(self, student: torch.nn.Module) -> torch.nn.Module:
        """Gradient checkpointing as the stage says (null: from 1B parameters): activations are recomputed in the
        backward pass (transformers does it in train mode)."""
        self.checkpointing = uses_gradient_checkpointing(self.cfg, self.parameter_count())
        if self.checkpointing:  # transformers 5 renamed it; 4.x has only the old name
            enable = getattr(student, "activation_checkpointing_enable", None)
            if enable is not None:
                enable(activation_checkpointing_kwargs={"use_reentrant": False})
            else:
                student.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        return student

    def load_teacher(self, source: str) -> torch.nn.Module:
        return load_model(source, self.dtype).to(self.device).eval().requires_grad_(False)

    def prepare(self, student: torch.nn.Module, total_steps: int) -> None:
        raise NotImplementedError

    def train_forward(self, **inputs):
        raise NotImplementedError

    def backward(self, loss: torch.Tensor) -> None:
        raise NotImplementedError

    def step(self) -> float | None:
        raise NotImplementedError

    @property
    def lr(self) -> float:
        return self.scheduler.get_last_lr()[0]

    def compute(self) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()

    def generating(self) -> contextlib.AbstractContextManager:
        return self.compute()

    def save_state(self, directory: Path) -> None:
        raise NotImplementedError

    def load_state(self, directory: Path) -> None:
        raise NotImplementedError

    def full_state_dict(self) -> dict[str, torch.Tensor] | None:
        return self.module.state_dict()

    def export_state_dict(self) -> dict[str, torch.Tensor] | None:
        return self.full_state_dict()

    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.module.parameters())

    def describe(self) -> str:
        """How the student runs, for the stage's first log line ("" for the plain single-process path)."""
        return ""


class TorchBackend(Backend):
    """One process: the student as a plain float32 module stepped by torch AdamW, its forwards autocast to the
    stage's half precision when there is one (float16 with a dynamic loss scale)."""

    def __init__(self, cfg: StageConfig):
        super().__init__(cfg)
        self.half = self.dtype != torch.float32
        self.scaler = torch.amp.GradScaler(self.device.type) if self.dtype == torch.float16 else None

    def load_student(self, source: str) -> torch.nn.Module:
        self.module = load_model(source, torch.float32).to(self.device)  # the master weights
        return self._checkpointed(self.module)

    def prepare(self, student: torch.nn.Module, total_steps: int) -> None:
        self.optimizer, self.scheduler = build_optimizer(student, self.cfg, total_steps)
        self.optimizer.zero_grad(set_to_none=True)

    def compute(self) -> contextlib.AbstractContextManager:
        if not self.half:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    def train_forward(self, **inputs):
        with self.compute():
            return self.module(**inputs)

    def backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def step(self) -> float | None:
        norm = None
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)  # clip the true gradient
        if self.cfg.optim.grad_clip_norm > 0:
            norm = float(torch.nn.utils.clip_grad_norm_(self.module.parameters(), self.cfg.optim.grad_clip_norm))
        if self.scaler is None:
            self.optimizer.step()
            self.scheduler.step()
        else:
            scale = self.scaler.get_scale()
            self.scaler.step(self.optimizer)  # skipped when the scaled gradient overflowed
            self.scaler.update()
            if self.scaler.get_scale() >= scale:  # a skipped step does not advance the schedule (as DeepSpeed)
                self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return norm

    def export_state_dict(self) -> dict[str, torch.Tensor] | None:
        return {k: v.to(self.dtype) if v.is_floating_point() else v for k, v in self.module.state_dict().items()}

    def save_state(self, directory: Path) -> None:
        state = {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()}
        if self.scaler is not None:
            state["scaler"] = self.scaler.state_dict()
        torch.save(state, Path(directory) / OPTIMIZER_FILE)

    def load_state(self, directory: Path) -> None:
        # our own file (optimizer, scheduler, loss scale): trusted, so full unpickling is fine
        state = torch.load(Path(directory) / OPTIMIZER_FILE, map_location=self.device, weights_only=False)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None:
            self.scaler.load_state_dict(state["scaler"])


def create_backend(cfg: StageConfig) -> Backend:
    """DeepSpeed when the stage runs as several processes or asks for it, plain torch otherwise. Settings that cannot
    work fail here, before any model is loaded."""
    use_engine = cfg.deepspeed.enabled or dist.world_size() > 1
    if not use_engine:
        if cfg.deepspeed.teacher_placement == "zero3":
            raise ConfigError("deepspeed.teacher_placement=zero3 needs the DeepSpeed path: set "
                              "deepspeed.enabled=true or run several processes")
        return TorchBackend(cfg)
    from takd.train.deepspeed_backend import DeepSpeedBackend

    return DeepSpeedBackend(cfg)
