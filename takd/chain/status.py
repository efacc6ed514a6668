"""Status of a run: `python -m takd.status RUN_DIR`.

One row per stage: job id, state (DONE; Slurm's state for submitted jobs; RUNNING while a process holds the
stage's LOCK, STOPPED when it has work but no writer), progress (the newest logged optimizer step / max_steps) and
the last logged metric, read live from the stage's metrics.jsonl.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import yaml

from takd import checkpoint as ckpt
from takd.chain.plan import read_plan
from takd.errors import cli
from takd.paths import DONE, stage_dir
from takd.train.metrics_log import read_metrics


def slurm_states(job_ids: list[str]) -> dict[str, str]:
    if not job_ids:
        return {}
    try:
        out = subprocess.run(["sacct", "-n", "-X", "--parsable2", "-o", "JobID,State", "-j", ",".join(job_ids)],
                             capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    states = {}
    for line in out.splitlines():
        parts = line.split("|")
        if len(parts) >= 2 and parts[0] in job_ids:
            states[parts[0]] = parts[1].split()[0]
    return states


def local_state(directory: Path) -> str | None:
    """A stage's state from its own directory: RUNNING while a live process holds its LOCK, STOPPED when it has
    checkpoints or metrics but no writer, None when nothing was started."""
    if ckpt.StageLock(directory).holder() is not None:
        return "RUNNING"
    if (directory / "metrics.jsonl").is_file() or ckpt.latest_checkpoint(directory / "checkpoints"):
        return "STOPPED"
    return None


def stage_progress(directory: Path, max_steps: int | None) -> tuple[str, str]:
    latest = ckpt.latest_checkpoint(directory / "checkpoints")
    step = ckpt.step_of(latest) if latest else 0
    last = ""
    metrics = directory / "metrics.jsonl"
    if metrics.is_file():
        rows = read_metrics(metrics)
        train = [r for r in rows if r["kind"] == "train"]
        evals = [r for r in rows if r["kind"] == "eval"]
        step = max([step] + [int(r["step"]) for r in train])
        if evals:
            r = evals[-1]
            last = f"step {r['step']}: " + ", ".join(f"{k}={r[k]:.3g}" for k in ("val_rouge_l", "val_loss") if k in r)
        elif train and "loss" in train[-1]:
            last = f"step {train[-1]['step']}: loss={train[-1]['loss']:.3g}"
    progress = f"{step}/{max_steps}" if max_steps else (str(step) if step else "")
    if (directory / "results.csv").is_file():
        import pandas as pd

        df = pd.read_csv(directory / "results.csv")
        rl = df[df["metric"] == "rouge_l"]["value"]
        last = f"rouge_l={rl.mean():.2f} ({len(rl)} runs)" if len(rl) else last
    return progress, last


@cli
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m takd.status", description=__doc__)
    ap.add_argument("run_dir")
    args = ap.parse_args(argv)
    run = Path(args.run_dir)
    if not (run / "plan.yaml").is_file():
        print(f"error: {run} has no plan.yaml (not a takd run directory)", file=sys.stderr)
        return 2
    _, stages = read_plan(run)
    jobs = yaml.safe_load((run / "jobs.yaml").read_text()) if (run / "jobs.yaml").is_file() else {}
    states = slurm_states([str(j) for j in jobs.values()])
    print(f"{'stage':36s} {'job':>8s} {'state':12s} {'progress':>10s}  last metric")
    for st in stages:
        d = stage_dir(run, st.name)
        job = str(jobs.get(st.name, ""))
        state = "DONE" if (d / DONE).is_file() else \
            states.get(job) or local_state(d) or ("SUBMITTED" if job else "not started")
        sized = st.kind == "train" and getattr(st.config, "epochs", None) is None  # epochs: steps known at run time
        progress, last = stage_progress(d, st.config.max_steps if sized else None)
        print(f"{st.name:36s} {job:>8s} {state:12s} {progress:>10s}  {last}")
    return 0
