"""Wall time of the README's main command (the embedded default), per stage, from a cold artefact cache.

    python benchmarks/end_to_end.py [--example analysis/examples/tiny-chain]

Runs `python -m takd.plan --chain tiny-l,tiny-m,tiny-s --executor local --submit` in a fresh TAKD_HOME and run
directory, reads the per-stage times the launcher records (timings.yaml), appends a block to
benchmarks/RESULTS.md, and optionally copies the run's report (Markdown, HTML, figures) as a committed example.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
COMMAND = ["-m", "takd.plan", "--chain", "tiny-l,tiny-m,tiny-s", "--executor", "local", "--submit"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--example", default=None, help="copy the run's report here (small: md, html, png)")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="takd-e2e-"))
    env = {**os.environ, "TAKD_HOME": str(work / "home")}
    run = work / "run"
    t0 = time.time()
    done = subprocess.run([sys.executable, *COMMAND, "--run-dir", str(run)], cwd=REPO, env=env, capture_output=True,
                          text=True)
    wall = time.time() - t0
    if done.returncode != 0:
        sys.exit(f"main command failed:\n{done.stderr[-2000:]}")
    timings = yaml.safe_load((run / "timings.yaml").read_text())
    rows = [f"| {k} | {v:.0f} |" for k, v in timings.items() if not k.startswith("_")]
    git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout
    table = [line for line in done.stdout.splitlines() if line.startswith(("  builtin", "builtin:"))]
    block = "\n".join([
        f"\n## End-to-end: the README's main command — {dt.date.today()} — {platform.node()} "
        f"({platform.machine()}, {os.cpu_count()} cores), commit {git.strip()}",
        f"Command: `python benchmarks/end_to_end.py` (runs `python {' '.join(COMMAND)}` with a cold TAKD_HOME). "
        f"Total wall time **{wall / 60:.1f} min** (target ≤ 10 min), including Python start-up of each stage job.",
        "", "| stage | seconds |", "|---|---|", *rows, "", "Its closing table:", "```", *table, "```", ""])
    print(block)
    with open(REPO / "benchmarks" / "RESULTS.md", "a") as fh:
        fh.write(block)
    if args.example:
        dest = REPO / args.example
        shutil.rmtree(dest, ignore_errors=True)
        dest.mkdir(parents=True)
        for f in (run / "report").iterdir():
            if f.suffix in (".md", ".html", ".png"):
                shutil.copy2(f, dest / f.name)
        (dest / "README.md").write_text(
            f"# Example report: the embedded default\n\nProduced by `python benchmarks/end_to_end.py --example "
            f"{args.example}` at commit {git.strip()} on {dt.date.today()} ({platform.machine()}, "
            f"{os.cpu_count()} cores, {wall / 60:.1f} min). See `report.md`.\n")
        print(f"example report: {dest}")


if __name__ == "__main__":
    main()
