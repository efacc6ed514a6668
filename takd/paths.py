"""Where takd keeps things: the repository's configs, the prepared-artefact cache, and run directories.

On an Alliance cluster checkpoints belong on $SCRATCH (large, fast, purged after 60 days) and the
prepared models/datasets in a cache every job can read offline. Defaults follow that:

- `TAKD_HOME` (prepared tokenizers, tiny models, tokenised data): $TAKD_HOME, else $SCRATCH/takd, else ~/.cache/takd
- runs: $TAKD_RUNS, else $SCRATCH/takd-runs, else ./runs
"""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
CONFIG_DIR = REPO_ROOT / "configs"
SLURM_DIR = REPO_ROOT / "slurm"
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
