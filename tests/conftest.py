"""Shared fixtures. Every test run gets its own TAKD_HOME so prepared artefacts never leak between runs."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

# submitit configures logging with dictConfig when first imported, which closes every existing handler: imported
# after rouge_score (absl), it would close absl's handler and with it the stream pytest captures into. First, then.
import submitit  # noqa: F401,I001

from takd.paths import SHARED_DATA

# Set before takd modules read it (they read the environment lazily, at call time).
os.environ.setdefault("TAKD_HOME", str(Path(os.environ.get("PYTEST_TAKD_HOME", "/tmp/takd-test-home"))))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

needs_shared = pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="../shared/data not present (a user's clone)")
SLURM_UP = shutil.which("sbatch") is not None and "SLURM_CONF" in os.environ


def pytest_collection_modifyitems(config, items):
    """Tests marked `slurm` need the local cluster that scripts/test.sh starts; without it they skip, saying why."""
    skip = pytest.mark.skip(reason="local Slurm not running: use scripts/test.sh (it starts slurm/local/up.sh)")
    for item in items:
        if "slurm" in item.keywords and not SLURM_UP:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tokenizer():
    from takd.models.loading import load_tokenizer_for

    return load_tokenizer_for("tiny-s")


@pytest.fixture(scope="session")
def trained_teacher(tmp_path_factory) -> Path:
    """A tiny-m SFT'd for a short while on the built-in task: a teacher that is clearly better than random."""
    from takd.train.config import stage_config
    from takd.train.run import run_stage

    out = tmp_path_factory.mktemp("teacher")
    cfg = stage_config("sft", name="teacher", student="tiny-m", output_dir=str(out), max_steps=120,
                       micro_batch_size=16, batch_size=16, max_new_tokens=32, max_prompt_tokens=128,
                       eval_every_steps=0, eval_prompts=40, save_every_steps=120, select_by="last", tensorboard=False)
    cfg.optim.lr = 2e-3
    cfg.optim.warmup_steps = 10
    return run_stage(cfg)


FAST_PROFILE = Path(__file__).parent / "data" / "fast_chain.yaml"


@pytest.fixture(scope="session")
def fast_chain_run(tmp_path_factory) -> tuple[Path, int, str]:
    """The tiny chain (tiny-l, tiny-m, tiny-s, direct baseline) run once through submitit's local executor.

    Returns (run directory, exit code, console output)."""
    import contextlib
    import io

    from takd.chain.cli import main as plan_main

    run = tmp_path_factory.mktemp("chain") / "run"
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = plan_main(["--chain", "tiny-l,tiny-m,tiny-s", "--submit", "--executor", "local", "--run-dir", str(run),
                        "--profile", str(FAST_PROFILE)])
    return run, rc, buf.getvalue()
