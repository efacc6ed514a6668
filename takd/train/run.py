"""Run one training stage to its `final/` HF directory: the entry the CLI and the chain launcher share."""

from __future__ import annotations

from pathlib import Path

from takd import dist
from takd.models.loading import quiet_transformers
from takd.train.config import StageConfig
from takd.train.loop import Trainer
from takd.train.preemption import PreemptionGuard


def trainer_for(cfg: StageConfig, preemption: PreemptionGuard | None = None, force_config: bool = False) -> Trainer:
    if cfg.method == "minillm":
        from takd.train.minillm.trainer import MiniLLMTrainer

        return MiniLLMTrainer(cfg, preemption, force_config)
    from takd.train.supervised import TRAINERS

    return TRAINERS[cfg.method](cfg, preemption, force_config)


def run_stage(cfg: StageConfig, preemption: PreemptionGuard | None = None, force_config: bool = False) -> Path:
    """Train the stage (or resume it) and return its `final/` HF directory. SIGUSR2/SIGTERM save a checkpoint at
    the next step boundary and raise `Preempted` (with `preemption` given, the caller's guard is used).
    force_config: checkpoints made with another config are moved aside and the stage starts afresh."""
    quiet_transformers()
    with preemption or PreemptionGuard() as guard:
        final = trainer_for(cfg, guard, force_config).run()
    dist.shutdown()  # all ranks finished: leave the process group together
    return final
