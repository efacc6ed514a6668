"""Run one training stage: `python -m takd.train --config stage.yaml [key=value ...]`.

The stage YAML holds any keys of the method's config (`method:` picks it: sft | kd | seqkd | minillm); every key
left out takes the reference default (`--method minillm --show-config` prints them all). `key=value` overrides use
dotted keys (`optim.lr=1e-4`, `kd.divergence=rkl`). A planned run's `<run>/stages/<stage>/stage.yaml` is such a
file: rerunning it by hand resumes from the stage's newest complete checkpoint; a stage whose `final/` exists
returns at once.
"""

from __future__ import annotations

import argparse
import sys

import yaml

from takd import config as cfglib
from takd.errors import cli
from takd.train.config import STAGE_CLASSES, from_mapping, load_stage


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m takd.train", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", help="stage YAML")
    ap.add_argument("--method", choices=sorted(STAGE_CLASSES), default=None,
                    help="with --show-config and no --config: the method whose defaults to print")
    ap.add_argument("--show-config", action="store_true", help="print the resolved stage config as YAML and exit")
    ap.add_argument("--force-config", action="store_true",
                    help="the stage's checkpoints were made with another config: move them aside and start afresh "
                         "(without it, such a resume is refused)")
    ap.add_argument("overrides", nargs="*", help="key=value overrides, e.g. max_steps=100 optim.lr=1e-4")
    return ap


@cli
def main(argv: list[str] | None = None) -> int:
    ap = parser()
    args = ap.parse_args(argv)
    if not args.config and not args.show_config:
        ap.error("give --config stage.yaml (or --method M --show-config to see a method's defaults)")
    if args.config:
        cfg = load_stage(args.config, args.overrides)
    else:
        method = args.method or "sft"
        base = {"method": method, "teacher": None if method == "sft" else "<teacher>"}
        cfg = from_mapping(cfglib.apply_overrides(base, args.overrides), f"{method} defaults")
    if args.show_config:
        print(yaml.safe_dump(cfglib.to_dict(cfg), sort_keys=False), end="")
        return 0
    from takd.checkpoint import StageLocked
    from takd.train.loop import NonFiniteLoss
    from takd.train.preemption import Preempted
    from takd.train.run import run_stage

    try:
        run_stage(cfg, force_config=args.force_config)
    except StageLocked as err:  # (a ConfigError is @cli's: the same one line, exit 2)
        print(f"error: {err}", file=sys.stderr)
        return 2
    except NonFiniteLoss as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except Preempted as err:
        print(f"stopped: {err}", file=sys.stderr)
        return 3
    return 0
