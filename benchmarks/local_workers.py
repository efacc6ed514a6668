"""The README's main command with stages one at a time (2 threads each) vs two at a time (1 thread each).

    python benchmarks/local_workers.py [--no-record]

Runs `python -m takd.plan --chain tiny-l,tiny-m,tiny-s --executor local --submit` twice, each in a fresh TAKD_HOME
and run directory, with `--local-workers 2` then `--local-workers 1`: the wall time of each (tiny models and the
built-in tokenizer built inside both), the sum of its stages' own times (timings.yaml), and the student's Rouge-L
via the TA and direct (thread counts change float reduction order, so results may differ slightly).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import yaml
from _results import arguments, record, table_block

REPO = Path(__file__).resolve().parent.parent
COMMAND = ["-m", "takd.plan", "--chain", "tiny-l,tiny-m,tiny-s", "--executor", "local", "--submit"]


def run(workers: int, work: Path) -> dict:
    env = {**os.environ, "TAKD_HOME": str(work / f"home{workers}")}
    env.pop("OMP_NUM_THREADS", None)
    run_dir = work / f"run{workers}"
    t0 = time.time()
    done = subprocess.run([sys.executable, *COMMAND, "--run-dir", str(run_dir), "--local-workers", str(workers)],
                          cwd=REPO, env=env, capture_output=True, text=True)
    wall = time.time() - t0
    if done.returncode:
        raise SystemExit(f"--local-workers {workers} failed:\n{done.stderr[-3000:]}")
    timings = yaml.safe_load((run_dir / "timings.yaml").read_text())
    res = pd.read_csv(run_dir / "results.csv")
    rl = res[(res["metric"] == "rouge_l")].groupby("label")["value"].mean()
    return {"wall": wall, "stages": sum(v for k, v in timings.items() if not k.startswith("_")),
            "via": rl.get("via-ta", float("nan")), "direct": rl.get("direct", float("nan"))}


def main() -> None:
    args = arguments(__doc__)
    work = Path(tempfile.mkdtemp(prefix="takd-workers-"))
    res = {w: run(w, work) for w in (2, 1)}
    rows = [f"| {w} | {os.cpu_count() // w} | {r['wall']:.0f} | {r['stages']:.0f} | {r['via']:.2f} | "
            f"{r['direct']:.2f} | {res[1]['wall'] / r['wall']:.2f} |" for w, r in sorted(res.items())]
    record(table_block(
        "The main command: stages one at a time vs two at a time on the local executor",
        f"{os.cpu_count()} cores", "Command: `python benchmarks/local_workers.py`. Wall time of the README's main "
        "command (fresh caches, the report included); stage seconds: the sum of each stage's own time (above the "
        "wall time when stages overlap).",
        ["workers", "threads per stage", "wall s", "stage s (sum)", "Rouge-L via TA", "Rouge-L direct",
         "speed-up vs 1 worker"], rows), write=not args.no_record)


if __name__ == "__main__":
    main()
