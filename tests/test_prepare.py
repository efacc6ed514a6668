"""`takd.prepare` fetches what jobs load: the right weight files of each real repository (recorded listings, no
network), a model counts as prepared only when config, weights and tokenizer are all there, and the planner says
what is missing and the command that fixes it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from takd.chain.prepare import NotPrepared, prepare_model
from takd.models import registry
from takd.models.snapshots import select_download, snapshot_problems
from tests.hub_cache import cache_snapshot

LISTINGS = json.loads((Path(__file__).parent / "data" / "hub_listings.json").read_text())


@pytest.mark.parametrize("repo", [r for r in LISTINGS if not r.startswith("_")])
def test_the_download_takes_one_weight_format_and_what_loads_it(repo):
    files = select_download(LISTINGS[repo], repo)
    assert "config.json" in files and not any("/" in f for f in files)
    assert not any(f.endswith((".msgpack", ".h5", ".ot", ".tflite", ".onnx")) or f.startswith("README") for f in files)
    safetensors = [f for f in files if f.endswith(".safetensors")]
    bins = [f for f in files if f.endswith(".bin")]
    if any(f.endswith(".safetensors") for f in LISTINGS[repo]):
        assert safetensors and not bins  # safetensors when the repo has them
    else:
        assert bins == sorted(f for f in LISTINGS[repo] if f.startswith("pytorch_model") and f.endswith(".bin"))
    if len(safetensors + bins) > 1:  # sharded: the index that names the shards comes too
        assert any(f.endswith(".index.json") for f in files)
    assert {"vocab.json", "merges.txt"} <= set(files) or {"tokenizer.json"} <= set(files) \
        or {"tokenizer.model"} <= set(files)


def test_opt_6_7b_has_only_bin_files_and_they_are_selected():
    files = select_download(LISTINGS["facebook/opt-6.7b"])
    assert [f for f in files if "pytorch_model" in f] == [
        "pytorch_model-00001-of-00002.bin", "pytorch_model-00002-of-00002.bin", "pytorch_model.bin.index.json"]


def test_a_cache_holding_only_config_is_not_prepared_and_the_plan_says_how_to_fix_it(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    snap = cache_snapshot(tmp_path / "hf" / "hub", "facebook/opt-125m", {"config.json": "{}"})
    problems = registry.offline_problems("opt-125m")
    assert any("weights" in p for p in problems) and any("tokenizer" in p for p in problems)
    from takd.chain.plan import check_offline
    from takd.config import ConfigError

    with pytest.raises(ConfigError) as err:
        check_offline(["opt-125m"], {"dolly": ("train", "valid")})
    text = str(err.value)
    assert "\n" not in text and "opt-125m (missing: weights" in text and "dataset dolly (train, valid)" in text
    assert text.endswith("on a login node run: python -m takd.prepare --models opt-125m --datasets dolly")
    for name in ("pytorch_model.bin", "vocab.json", "merges.txt"):
        (snap / name).write_text("x")
    assert registry.offline_problems("opt-125m") == []


def test_an_index_whose_shards_are_missing_is_not_prepared(tmp_path):
    d = tmp_path / "m"
    d.mkdir()
    (d / "config.json").write_text("{}")
    (d / "tokenizer.json").write_text("{}")
    index = {"weight_map": {"a": "pytorch_model-00001-of-00002.bin", "b": "pytorch_model-00002-of-00002.bin"}}
    (d / "pytorch_model.bin.index.json").write_text(json.dumps(index))
    (d / "pytorch_model-00001-of-00002.bin").write_text("x")
    assert snapshot_problems(d) == ["weight shards pytorch_model-00002-of-00002.bin (named by "
                                    "pytorch_model.bin.index.json)"]


def test_prepare_refuses_a_directory_that_holds_only_a_config(tmp_path):
    d = tmp_path / "teacher"
    d.mkdir()
    (d / "config.json").write_text("{}")
    with pytest.raises(NotPrepared, match="the directory lacks weights"):
        prepare_model(str(d))


def test_prepare_downloads_the_selected_files_with_one_worker_and_checks_them(tmp_path, monkeypatch):
    """A fake hub: the recorded opt-6.7b listing, and a download that writes what it is asked for (an OPT-6.7B
    config, a tokenizer, small shard files): prepare asks for exactly the .bin weights, with one worker, and builds
    the 6.7B model on the meta device to count it."""
    from transformers import OPTConfig

    from takd.models.loading import load_tokenizer_for

    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    asked = {}

    def fake_download(repo, allow_patterns, max_workers, cache_dir):
        asked.update(repo=repo, files=allow_patterns, workers=max_workers)
        snap = cache_snapshot(Path(cache_dir), repo, {})
        OPTConfig(vocab_size=50272, hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, ffn_dim=16384,
                  word_embed_proj_dim=4096, max_position_embeddings=2048).save_pretrained(snap)
        load_tokenizer_for("tiny-s").save_pretrained(snap)
        for f in allow_patterns:
            if f.endswith(".bin"):
                (snap / f).write_text("x")
        (snap / "pytorch_model.bin.index.json").write_text(json.dumps({"weight_map": {
            "a": "pytorch_model-00001-of-00002.bin", "b": "pytorch_model-00002-of-00002.bin"}}))
        return str(snap)

    monkeypatch.setattr("huggingface_hub.HfApi.list_repo_files", lambda self, repo: LISTINGS[repo])
    monkeypatch.setattr("huggingface_hub.snapshot_download", fake_download)
    line = prepare_model("opt-6.7b")
    assert asked["repo"] == "facebook/opt-6.7b" and asked["workers"] == 1
    assert asked["files"] == select_download(LISTINGS["facebook/opt-6.7b"])
    assert "downloaded facebook/opt-6.7b" in line and "(6,658M parameters)" in line
    assert registry.offline_problems("opt-6.7b") == []
    assert "already" not in line and "ready at" in prepare_model("opt-6.7b")


def test_inputs_are_staged_to_node_local_disk_once_per_node(tmp_path, capsys):
    from takd.chain.staging import stage_inputs
    from takd.models.loading import model_dir
    from takd.models.registry import base_model_name
    from takd.train.config import stage_config

    teacher = tmp_path / "teacher"
    import shutil

    shutil.copytree(model_dir("tiny-m"), teacher)
    cfg = stage_config("kd", name="kd", student="tiny-s", teacher=str(teacher))
    node = tmp_path / "slurm_tmpdir"
    node.mkdir()
    staged = stage_inputs(cfg, node, local_rank=0, threshold_gb=0.0)
    assert staged.teacher == str(node / "takd-inputs" / "teacher") and staged.student == "tiny-s"  # tiny: built
    assert base_model_name(staged.teacher) == "tiny-m" and snapshot_problems(staged.teacher) == []
    assert "[kd] staged teacher" in capsys.readouterr().out
    # the node's other ranks wait for the copy and use it (here: already complete)
    assert stage_inputs(cfg, node, local_rank=1, threshold_gb=0.0, wait_s=1.0).teacher == staged.teacher
    assert stage_inputs(cfg, node, local_rank=0).teacher == str(teacher)  # under 2 GB: read in place
