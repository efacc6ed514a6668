"""The backend seam: how the student is placed, run, stepped and saved. `create_backend` is the one place that
decides between plain torch in one process (`TorchBackend`) and a DeepSpeed engine (`DeepSpeedBackend`: several
processes, or `deepspeed.enabled`); the loop and the methods only talk to the `Backend` interface.

    backend.load_student(source)   the student, on this process's device (partitioned under ZeRO-3)
    backend.load_teacher(source)   the frozen teacher (replicated, or an inference-only ZeRO-3 engine)
    backend.prepare(student)       optimizer and schedule (and the engine around them)
    backend.train_forward(**batch) a training forward (the engine counts accumulation micro-steps in it)
    backend.backward(loss)         back-propagate one micro-batch's share of the step's loss
    backend.step()                 clip, optimizer step, schedule: the optimizer step; returns the gradient norm
    backend.module                 the student module for no-grad work (validation, generation, export)
    backend.generating()           context for decoding (ZeRO-3: the student gathered whole when configured)
    backend.save_state(dir) / load_state(dir)   optimizer + schedule (collective under DeepSpeed)
    backend.full_state_dict()      the whole student's weights for an HF export (collective under ZeRO-3)
"""

from __future__ import annotations

import contextlib
import math
from pathlib import Path

import torch

from takd import dist
from takd.config import ConfigError
from takd.models.loading import load_model
from takd.train.config import OptimConfig, StageConfig

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
OPTIMIZER_FILE = "optimizer.pt"


def lr_factor(step: int, cfg_optim: OptimConfig, total_steps: int) -> float:
    """Multiplier of the peak lr at optimizer step `step` (0-based): linear warmup, then constant or cosine.

    warmup: (step+1)/warmup_steps; cosine: min_lr + (lr − min_lr)·½(1 + cos(π·progress)), progress ∈ [0, 1].
    """
    if step < cfg_optim.warmup_steps:
        return (step + 1) / cfg_optim.warmup_steps
    if cfg_optim.schedule == "constant":
        return 1.0
    progress = (step - cfg_optim.warmup_steps) / max(1, total_steps - cfg_optim.warmup_steps)
    lr = cfg_optim.min_lr + (cfg_optim.lr - cfg_optim.min_lr) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return lr / cfg_optim.lr


def build_optimizer(params, cfg: StageConfig) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """torch AdamW (no JIT-compiled op) and our schedule: what both backends step."""
    o = cfg.optim
    optimizer = torch.optim.AdamW(params, lr=o.lr, betas=(o.beta1, o.beta2), eps=o.eps, weight_decay=o.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, o, cfg.max_steps))
    return optimizer, scheduler


class Backend:
    """The interface the loop and the methods use (see the module docstring)."""

    lockstep = False  # every forward is a collective: ranks must run every forward, in the same order
    teacher_sharded = False  # the teacher is an inference-only ZeRO-3 engine

    def __init__(self, cfg: StageConfig):
        self.cfg = cfg
        self.rank, self.world = dist.rank(), dist.world_size()
        self.device = dist.device()
        self.dtype = DTYPES[cfg.dtype]
        self.module: torch.nn.Module | None = None

    def load_student(self, source: str) -> torch.nn.Module:
        raise NotImplementedError

    def load_teacher(self, source: str) -> torch.nn.Module:
        return load_model(source, self.dtype).to(self.device).eval().requires_grad_(False)

    def prepare(self, student: torch.nn.Module) -> None:
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

    def generating(self) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()

    def save_state(self, directory: Path) -> None:
        raise NotImplementedError

    def load_state(self, directory: Path) -> None:
        raise NotImplementedError

    def full_state_dict(self) -> dict[str, torch.Tensor] | None:
        return self.module.state_dict()

    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.module.parameters())

    def describe(self) -> str:
        """How the student runs, for the stage's first log line ("" for the plain single-process path)."""
        return ""


class TorchBackend(Backend):
    """One process: the student as a plain module, stepped by torch AdamW."""

    def load_student(self, source: str) -> torch.nn.Module:
        self.module = load_model(source, self.dtype).to(self.device)
        return self.module

    def prepare(self, student: torch.nn.Module) -> None:
        self.optimizer, self.scheduler = build_optimizer(student.parameters(), self.cfg)
        self.optimizer.zero_grad(set_to_none=True)

    def train_forward(self, **inputs):
        return self.module(**inputs)

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def step(self) -> float | None:
        norm = None
        if self.cfg.optim.grad_clip_norm > 0:
            norm = float(torch.nn.utils.clip_grad_norm_(self.module.parameters(), self.cfg.optim.grad_clip_norm))
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return norm

    def save_state(self, directory: Path) -> None:
        torch.save({"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()},
                   Path(directory) / OPTIMIZER_FILE)

    def load_state(self, directory: Path) -> None:
        # our own file (optimizer, scheduler): trusted, so full unpickling is fine
        state = torch.load(Path(directory) / OPTIMIZER_FILE, map_location=self.device, weights_only=False)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])


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
