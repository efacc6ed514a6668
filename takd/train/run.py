"""Run one training stage to its `final/` HF directory: the entry the CLI and the chain launcher share."""

from __future__ import annotations

from pathlib import Path

from takd import dist
from takd.models.loading import quiet_transformers
from takd.train.config import StageConfig
from takd.train.loop import Trainer


def trainer_for(cfg: StageConfig) -> Trainer:
    if cfg.method == "minillm":
        from takd.train.minillm.trainer import MiniLLMTrainer

        return MiniLLMTrainer(cfg)
    from takd.train.supervised import TRAINERS

    return TRAINERS[cfg.method](cfg)


def run_stage(cfg: StageConfig) -> Path:
    """Train the stage (or resume it) and return its `final/` HF directory."""
    quiet_transformers()
    final = trainer_for(cfg).run()
    dist.shutdown()  # all ranks finished: leave the process group together
    return final
