"""The planner → launcher → trainer hand-offs, compared whole against golden files (submitit's golden sbatch test):
a planned stage's `stage.yaml` is exactly what `takd.train --config` / `takd.evaluate --config` read, and its sbatch
script is what Slurm gets. If a change to them is intended, regenerate with TAKD_UPDATE_GOLDEN=1 and review the
diff of tests/golden/."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from takd.chain.cli import main as plan_main
from takd.chain.plan import read_plan
from takd.paths import final_dir

REPO = Path(__file__).resolve().parent.parent
GOLDEN = Path(__file__).parent / "golden"
RUN = Path("/golden-run")
OPT = "opt-13b,opt-6.7b,opt-1.3b"


def _normalise(text: str) -> str:
    return text.replace(sys.executable, "PYTHON")


def _check(name: str, text: str) -> None:
    f = GOLDEN / name
    if os.environ.get("TAKD_UPDATE_GOLDEN") == "1":
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(text)
    assert f.is_file(), f"no golden file {f}: run with TAKD_UPDATE_GOLDEN=1 once and review it"
    assert text == f.read_text(), f"{name} changed; if intended, regenerate with TAKD_UPDATE_GOLDEN=1 and review"


@pytest.fixture
def narval_plan(tmp_path, monkeypatch, capsys):
    """The OPT chain planned for Narval and written (not submitted) to a real directory."""
    monkeypatch.setenv("TAKD_HOME", "/takd-home")
    monkeypatch.delenv("HF_HOME", raising=False)
    monkeypatch.setattr("takd.chain.cli.check_offline", lambda *a: None)  # no weights on this machine
    monkeypatch.setattr("takd.chain.cli.check_corpora", lambda *a: None)  # nor the OPT pretraining corpus
    monkeypatch.setattr("takd.chain.launch.launch", lambda *a, **k: 0)
    run = tmp_path / "run"
    assert plan_main(["--chain", OPT, "--cluster", "narval", "--account", "def-lab", "--run-dir", str(run),
                      "--submit", "--baselines", "kd"]) == 0
    capsys.readouterr()
    return run


@pytest.mark.parametrize("stage", ["sft-opt-13b", "minillm-opt-13b-to-opt-6.7b", "baseline-kd-opt-1.3b",
                                   "eval-minillm-opt-6.7b-to-opt-1.3b"])
def test_stage_yaml_is_the_golden_resolved_config(narval_plan, stage):
    text = (narval_plan / "stages" / stage / "stage.yaml").read_text()
    _check(f"{stage}.stage.yaml", text.replace(str(narval_plan), str(RUN)))


GOLDEN_SBATCH = {  # per cluster profile: a training stage and an evaluation stage (narval's is multi-node)
    "narval": ("minillm-opt-13b-to-opt-6.7b", "eval-sft-opt-13b"),
    "rorqual": ("minillm-opt-13b-to-opt-6.7b", "eval-sft-opt-13b"),
    "fir": ("sft-opt-13b", "eval-minillm-opt-6.7b-to-opt-1.3b"),
    "nibi": ("minillm-opt-13b-to-opt-6.7b", "eval-sft-opt-13b"),
    "trillium": ("init-opt-6.7b", "eval-sft-opt-13b"),
    "local": ("minillm-tiny-l-to-tiny-m", "eval-sft-tiny-l"),
    "local-ddp": ("minillm-tiny-l-to-tiny-m", "eval-sft-tiny-l"),
}


@pytest.mark.parametrize("cluster", sorted(GOLDEN_SBATCH))
def test_sbatch_scripts_are_golden_on_every_cluster_profile(cluster, monkeypatch, capsys):
    monkeypatch.setenv("TAKD_HOME", "/takd-home")
    monkeypatch.delenv("HF_HOME", raising=False)
    monkeypatch.setattr("takd.chain.cli.check_offline", lambda *a: None)  # no weights on this machine
    chain = "tiny-l,tiny-m,tiny-s" if cluster.startswith("local") else OPT
    for stage in GOLDEN_SBATCH[cluster]:
        assert plan_main(["--chain", chain, "--cluster", cluster, "--account", "def-lab", "--run-dir", str(RUN),
                          "--show-sbatch", stage]) == 0
        _check(f"sbatch/{cluster}.{stage}.sbatch", _normalise(capsys.readouterr().out))
    if cluster == "narval":
        text = (GOLDEN / "sbatch" / "narval.minillm-opt-13b-to-opt-6.7b.sbatch").read_text()
        assert "#SBATCH --nodes=4" in text and "export NCCL_ASYNC_ERROR_HANDLING=1" in text  # multi-node
    if cluster == "trillium":
        text = (GOLDEN / "sbatch" / "trillium.init-opt-6.7b.sbatch").read_text()
        assert "--mem" not in text and "#SBATCH --gpus-per-node=h100:4" in text  # whole node, no memory request
        assert 'export TRITON_CACHE_DIR="$SCRATCH/.cache/triton"' in text  # HOME is read-only in jobs


def test_read_plan_gives_back_the_typed_stages(narval_plan):
    _, stages = read_plan(narval_plan)
    by = {s.name: s for s in stages}
    first = by["minillm-opt-13b-to-opt-6.7b"]
    assert first.kind == "train" and first.config.minillm.alpha == 0.2 and first.config.deepspeed.enabled
    assert first.config.teacher == str(final_dir(narval_plan, "sft-opt-13b"))
    assert not hasattr(by["sft-opt-13b"].config, "minillm")  # an SFT stage carries no MiniLLM keys
    ev = by["eval-minillm-opt-6.7b-to-opt-1.3b"]
    assert ev.kind == "eval" and ev.config.model == str(final_dir(narval_plan, "minillm-opt-6.7b-to-opt-1.3b"))


def test_the_readme_hand_rerun_command_trains_a_planned_stage(tmp_path, capsys):
    """`python -m takd.train --config <run>/stages/<stage>/stage.yaml` runs the stage the planner wrote."""
    run = tmp_path / "run"
    import takd.chain.launch

    launch, takd.chain.launch.launch = takd.chain.launch.launch, lambda *a, **k: 0
    try:
        assert plan_main(["--chain", "tiny-m,tiny-s", "--run-dir", str(run), "--submit", "--no-eval"]) == 0
    finally:
        takd.chain.launch.launch = launch
    capsys.readouterr()
    stage = run / "stages" / "init-tiny-s" / "stage.yaml"
    done = subprocess.run([sys.executable, "-m", "takd.train", "--config", str(stage), "max_steps=2",
                           "eval_prompts=4", "tensorboard=false"], cwd=REPO, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "[init-tiny-s] sft: student tiny-s" in done.stdout
    assert (run / "stages" / "init-tiny-s" / "final" / "COMPLETE").is_file()
