"""Run one training stage: `python -m takd.train --config stage.yaml [key=value ...]`.

The stage YAML is merged over its method's defaults (configs/methods/<method>.yaml); `key=value` overrides
use dotted keys (`optim.lr=1e-4`, `kd.divergence=rkl`). Re-running the same command resumes from the newest
complete checkpoint; a stage whose `final/` exists returns at once. The chain planner calls `run_stage`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from takd import config as cfglib
from takd.stage import StageConfig, load_stage


def trainer_for(cfg: StageConfig):
    from takd.trainer import TRAINERS

    if cfg.method == "minillm":
        from takd.minillm_trainer import MiniLLMTrainer

        return MiniLLMTrainer(cfg)
    return TRAINERS[cfg.method](cfg)


def run_stage(cfg: StageConfig) -> Path:
    """Train the stage and return its `final/` HF directory."""
    from takd.engine import shutdown

    quiet_libraries()
    final = trainer_for(cfg).run()
    shutdown()  # all ranks finished: leave the process group together
    return final


def quiet_libraries() -> None:
    """Per-shard progress bars and load reports from transformers drown our own log in Slurm output files."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m takd.train", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True, help="stage YAML (see configs/methods/ for every key)")
    ap.add_argument("overrides", nargs="*", help="key=value overrides, e.g. max_steps=100 optim.lr=1e-4")
    args = ap.parse_args(argv)
    try:
        cfg = load_stage(args.config, args.overrides)
    except cfglib.ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    run_stage(cfg)
    return 0


if __name__ == "__main__":
    sys.exit(main())
