"""Evaluate one model: `python -m takd.evaluate --model PATH [--datasets builtin] [--seeds 10,20,30,40,50] ...`,
or an evaluation stage of a planned run as it is: `python -m takd.evaluate --config <run>/stages/<stage>/stage.yaml`
(options given beside it override the file). Writes `results.csv` (tidy rows) and the generations."""

from __future__ import annotations

import argparse
from pathlib import Path

from takd import config as cfglib
from takd.errors import cli
from takd.evaluate.config import EvalJob


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m takd.evaluate", description=__doc__)
    ap.add_argument("--config", default=None, help="an evaluation stage.yaml (EvalJob keys)")
    cfglib.add_arguments(ap, EvalJob, skip=("meta",), flags={"output_dir": "--out"})
    return ap


def load_job(args: argparse.Namespace) -> EvalJob:
    base = cfglib.read_yaml(args.config) if args.config else {}
    model = args.model or base.get("model")
    if model and not (args.output_dir or base.get("output_dir")):
        base["output_dir"] = str(Path(model) / "eval")
    return cfglib.from_arguments(EvalJob, args, base, args.config or "command line")


@cli
def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    job = load_job(args)
    from takd.evaluate.run import run_evaluation, write_results
    from takd.models.loading import quiet_transformers

    quiet_transformers()
    out = write_results(run_evaluation(job), Path(job.output_dir))
    print(f"wrote {out}")
    return 0
