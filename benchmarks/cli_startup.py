"""Start-up time of every command's `--help` (what a user waits for on a login node before anything prints).

    python benchmarks/cli_startup.py [--repo DIR] [--repeats 5]

Runs `python -m takd.<command> --help` from DIR (default: this checkout) `--repeats` times each, interleaving the
commands, and prints the median wall time per command. Appends a block to benchmarks/RESULTS.md unless --no-record.
"""

from __future__ import annotations

import argparse
import datetime as dt
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

from _results import record

HERE = Path(__file__).resolve().parent
COMMANDS = ["plan", "train", "evaluate", "prepare", "status", "report"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repo", default=str(HERE.parent))
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--no-record", action="store_true")
    args = ap.parse_args()
    times: dict[str, list[float]] = {c: [] for c in COMMANDS}
    for _ in range(args.repeats):
        for c in COMMANDS:
            t0 = time.perf_counter()
            done = subprocess.run([sys.executable, "-m", f"takd.{c}", "--help"], cwd=args.repo, capture_output=True)
            times[c].append(time.perf_counter() - t0)
            if done.returncode != 0 or not done.stdout.strip():
                times[c][-1] = float("nan")  # e.g. an old `takd.evaluate` that printed nothing
    rows = [f"| `python -m takd.{c} --help` | {statistics.median(times[c]):.2f} |" for c in COMMANDS]
    block = "\n".join([f"\n## `--help` start-up — {dt.date.today()} — {platform.node()} ({platform.machine()}, "
                       f"Python {platform.python_version()})",
                       f"Command: `python benchmarks/cli_startup.py --repo {args.repo} --repeats {args.repeats}`; "
                       "median wall seconds of each command's `--help` (interleaved).", "",
                       "| command | seconds |", "|---|---|", *rows, ""])
    record(block, write=not args.no_record)


if __name__ == "__main__":
    main()
