"""Experiment trackers (#17): TensorBoard and W&B in offline mode through one interface: hyperparameters, every
scalar and sample generations reach both; a job's W&B run stays offline whatever the environment says; a stage
asking for W&B without the package is refused before anything is submitted."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from takd.config import ConfigError


def test_wandb_offline_and_tensorboard_get_config_scalars_and_samples(tmp_path, monkeypatch):
    from takd.train.config import stage_config
    from takd.train.run import run_stage

    # an environment asking for online mode at an unreachable server: the job must stay offline anyway
    monkeypatch.setenv("WANDB_MODE", "online")
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    out = tmp_path / "stage"
    cfg = stage_config("sft", name="tracked", student="tiny-s", output_dir=str(out), max_steps=2, micro_batch_size=4,
                       batch_size=4, max_new_tokens=8, max_prompt_tokens=128, eval_every_steps=2, eval_prompts=4,
                       log_every_steps=1, select_by="last", tensorboard=True, wandb=True, wandb_project="takd-test")
    run_stage(cfg)
    runs = list((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, list((out / "wandb").iterdir())
    record = next(runs[0].glob("run-*.wandb")).read_bytes()
    for key in (b"train/loss", b"train/lr", b"eval/val_rouge_l", b"takd-test", b"max_new_tokens"):
        assert key in record, key  # scalars, the project and the stage config as hyperparameters
    table = json.loads(next((runs[0] / "files" / "media" / "table").glob("samples_2_*.table.json")).read_text())
    assert table["columns"] == ["instruction", "reference", "generation"] and len(table["data"]) == 4
    assert all(isinstance(x, str) for row in table["data"] for x in row)
    assert list((out / "tb").glob("events.out.tfevents.*"))


def test_planner_refuses_wandb_without_the_package(monkeypatch, tmp_path):
    from takd.chain import cli

    monkeypatch.setattr("takd.train.trackers.wandb_available", lambda: False)
    with pytest.raises(ConfigError, match="wandb package is not installed: pip install wandb"):
        cli.prepare_run(cli.parser().parse_args(["--chain", "tiny-m,tiny-s", "--run-dir", str(tmp_path / "r"),
                                                 "--set", "wandb=true"]))
    assert not (tmp_path / "r").exists()


def test_stage_without_trackers_writes_only_metrics_jsonl(tmp_path):
    from takd.train.metrics_log import MetricsLog

    log = MetricsLog(tmp_path, "s", enabled=True)
    log.log(1, {"loss": 1.5})
    log.samples(1, [{"instruction": "i", "output": "o"}], ["g"])
    log.close()
    assert [p.name for p in Path(tmp_path).iterdir()] == ["metrics.jsonl"]
