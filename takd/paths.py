"""Where takd keeps things: its packaged configs, the prepared-artefact cache, run directories and their layout.

On an Alliance cluster checkpoints belong on $SCRATCH (large, fast, purged after 60 days) and the
prepared models/datasets in a cache every job can read offline. Defaults follow that:

- `TAKD_HOME` (prepared tokenizers, tiny models, tokenised data): $TAKD_HOME, else $SCRATCH/takd, else ~/.cache/takd
- runs: $TAKD_RUNS, else $SCRATCH/takd-runs, else ./runs

A run directory: `<run>/plan.yaml` (the DAG), `<run>/stages/<stage>/stage.yaml` (the stage's resolved config, which
`python -m takd.train --config` or `python -m takd.evaluate --config` reads as it is), `<run>/stages/<stage>/final/`
(the HF directory handed to the next stage) and `<run>/stages/<stage>/DONE`.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
CONFIG_DIR = PACKAGE_DIR / "configs"  # packaged: models, chains, clusters, deepspeed
CLUSTER_DIR = CONFIG_DIR / "clusters"
DONE = "DONE"  # marker a stage writes after its final/ (or results.csv) is complete and loads
REPO_ROOT = PACKAGE_DIR.parent  # a source checkout's root (site-packages for a wheel install)
# Reference artefacts that sit beside a developer's checkout (absent in a user's clone).
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


def takd_home() -> Path:
    if os.environ.get("TAKD_HOME"):
        return Path(os.environ["TAKD_HOME"]).expanduser()
    if os.environ.get("SCRATCH"):
        return Path(os.environ["SCRATCH"]) / "takd"
    return Path.home() / ".cache" / "takd"


def runs_root() -> Path:
    if os.environ.get("TAKD_RUNS"):
        return Path(os.environ["TAKD_RUNS"]).expanduser()
    if os.environ.get("SCRATCH"):
        return Path(os.environ["SCRATCH"]) / "takd-runs"
    return Path.cwd() / "runs"


def stage_dir(run_dir: str | Path, stage: str) -> Path:
    return Path(run_dir) / "stages" / stage


def final_dir(run_dir: str | Path, stage: str) -> Path:
    """The HF directory a stage hands to the stages after it."""
    return stage_dir(run_dir, stage) / "final"


def git_revision() -> str:
    """The short commit of the takd checkout (recorded in plans and reports), or "unknown"."""
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             cwd=PACKAGE_DIR, timeout=5)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def tiny_dir(name: str) -> Path:
    """Where a tiny model is materialised (random init, fixed seed) on first use."""
    return takd_home() / "models" / name


def builtin_tokenizer_dir() -> Path:
    """Where the built-in BPE tokenizer is trained on first use."""
    return takd_home() / "tokenizers" / "builtin-bpe"


def gpt2_bpe_dir() -> Path | None:
    """The GPT-2/OPT BPE files (vocab.json, merges.txt) if present: $TAKD_GPT2_BPE or ../shared/data/gpt2-bpe."""
    candidates = [os.environ.get("TAKD_GPT2_BPE"), SHARED_DATA / "gpt2-bpe"]
    for c in candidates:
        if c and (Path(c) / "vocab.json").is_file() and (Path(c) / "merges.txt").is_file():
            return Path(c)
    return None


def selfinst_file() -> Path | None:
    f = SHARED_DATA / "selfinst" / "user_oriented_instructions.jsonl"
    return f if f.is_file() else None
