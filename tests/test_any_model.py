"""Models the registry does not name (a directory, a cached hub id) are planned as well as those it does: sized from
their own config.json (exactly as transformers builds them), and chained when their tokenizers hold the same
tokens at the same ids, whatever their names."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from takd.chain.allocate import assign_resources
from takd.chain.cli import main as plan_main
from takd.chain.plan import build_plan
from takd.chain.profiles import ChainProfile, load_cluster
from takd.chain.resources import GB, kv_cache_gb
from takd.models import registry
from takd.models.architecture import parameter_count
from tests.hub_cache import cache_snapshot

DATA = Path(__file__).parent / "data"
SMALL = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4, vocab_size=100)
FAMILIES = {
    "opt": dict(hidden_size=64, ffn_dim=128, num_hidden_layers=2, num_attention_heads=4, vocab_size=100,
                max_position_embeddings=64),
    "opt-350m-like": dict(hidden_size=64, ffn_dim=128, num_hidden_layers=2, num_attention_heads=4, vocab_size=100,
                          max_position_embeddings=64, word_embed_proj_dim=32, do_layer_norm_before=False),
    "opt-untied-no-bias": dict(hidden_size=64, ffn_dim=128, num_hidden_layers=2, num_attention_heads=4,
                               vocab_size=100, max_position_embeddings=64, enable_bias=False,
                               tie_word_embeddings=False),
    "gpt2": dict(n_embd=64, n_layer=2, n_head=4, vocab_size=100, n_positions=64),
    "gpt2-untied-n_inner": dict(n_embd=64, n_layer=2, n_head=4, vocab_size=100, n_positions=64, n_inner=100,
                                tie_word_embeddings=False),
    "llama-gqa": dict(SMALL, num_key_value_heads=2),
    "llama-tied-biases": dict(SMALL, tie_word_embeddings=True, attention_bias=True, mlp_bias=True),
    "mistral": dict(SMALL, num_key_value_heads=2),
    "qwen2": dict(SMALL, num_key_value_heads=2),
    "qwen3": dict(SMALL, num_key_value_heads=2, head_dim=32),
}


def _meta_count(kind: str, fields: dict) -> int:
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.for_model(kind, **fields))
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", list(FAMILIES))
def test_parameter_counts_equal_what_transformers_builds(name):
    kind = name.split("-")[0]
    expected = _meta_count(kind, FAMILIES[name])
    written = AutoConfig.for_model(kind, **FAMILIES[name]).to_dict()  # as save_pretrained writes it
    assert parameter_count(written) == (expected, True)
    assert parameter_count({"model_type": kind, **FAMILIES[name]}) == (expected, True)  # defaults left out


def _tokenizer_json(tokens: list[str]) -> str:
    return json.dumps({"model": {"type": "BPE", "vocab": {t: i for i, t in enumerate(tokens)}, "merges": []},
                       "added_tokens": [{"id": 0, "content": tokens[0], "special": True}]})


TOKENS = ["</s>", *[f"tok{i}" for i in range(1, 200)]]


def _model_dir(root: Path, name: str, config: dict, tokens: list[str] = TOKENS) -> Path:
    d = root / name
    d.mkdir(parents=True)
    (d / "config.json").write_text(json.dumps(config))
    (d / "model.safetensors").write_text("weights")
    (d / "tokenizer.json").write_text(_tokenizer_json(tokens))
    (d / "tokenizer_config.json").write_text(json.dumps({"eos_token": tokens[0]}))
    return d


def _llama(hidden: int, layers: int, vocab: int = 200) -> dict:
    return {"model_type": "llama", "hidden_size": hidden, "intermediate_size": 3 * hidden, "num_hidden_layers": layers,
            "num_attention_heads": 8, "num_key_value_heads": 2, "vocab_size": vocab, "max_position_embeddings": 2048,
            "tie_word_embeddings": True}


def test_the_opt_13b_config_is_the_registry_model_and_a_directory_teacher_gets_its_estimate(tmp_path, monkeypatch):
    """tests/data/configs/opt-13b.json: facebook/opt-13b's config.json as published (written from the hub page, not
    fetched here). As a --teacher-path directory it is sized like the registry's opt-13b."""
    config = json.loads((DATA / "configs" / "opt-13b.json").read_text())
    count, exact = parameter_count(config)
    assert exact and count == _meta_count("opt", {k: v for k, v in config.items() if k != "model_type"})
    assert count / 1e6 == pytest.approx(registry.resolve("opt-13b").params_m, abs=0.5)

    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    opt_tokenizer = {"tokenizer.json": _tokenizer_json(TOKENS), "config.json": "{}"}
    cache_snapshot(tmp_path / "hf" / "hub", "facebook/opt-125m", opt_tokenizer)
    teacher_dir = _model_dir(tmp_path, "my-opt-13b-sft", config)
    estimates = []
    for teacher_path in (None, str(teacher_dir)):
        stages = build_plan(["opt-13b", "opt-6.7b"], run_dir=tmp_path / "run", profile=ChainProfile(),
                            teacher_path=teacher_path, evaluate=False)
        assign_resources(stages, load_cluster("rorqual"))
        first = next(s for s in stages if s.role == "distill")
        estimates.append((first.nodes, first.gpus_per_node, first.config.deepspeed.zero_stage,
                          round(first.mem_per_gpu_gb, 1), round(first.est_hours, 1)))
    assert estimates[0] == estimates[1]


def test_a_hub_id_chain_and_a_directory_chain_of_one_family_plan(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    # hub ids the registry knows are its models: sized, one family, stage names without '/'
    assert plan_main(["--chain", "facebook/opt-1.3b,facebook/opt-125m", "--cluster", "rorqual", "--account",
                      "def-lab"]) == 0
    out = capsys.readouterr().out
    assert "minillm-facebook--opt-1.3b-to-facebook--opt-125m" in out
    # hub ids it does not know, from the offline cache, and directories: sized from their config.json
    hub = tmp_path / "hf" / "hub"
    for repo, cfg in (("org/big-lm", _llama(1024, 16)), ("org/small-lm", _llama(512, 8))):
        files = {"config.json": json.dumps(cfg), "model.safetensors": "w", "tokenizer.json": _tokenizer_json(TOKENS)}
        cache_snapshot(hub, repo, files)
    big, small = _model_dir(tmp_path, "big", _llama(1024, 16)), _model_dir(tmp_path, "small", _llama(512, 8))
    for chain in ("org/big-lm,org/small-lm", f"{big},{small}"):
        assert plan_main(["--chain", chain, "--cluster", "rorqual", "--account", "def-lab"]) == 0, chain
        stages = build_plan(chain.split(","), run_dir=tmp_path / "r", profile=ChainProfile(), evaluate=False)
        assign_resources(stages, load_cluster("rorqual"))
        distill = next(s for s in stages if s.role == "distill")
        spec = registry.resolve(chain.split(",")[1])
        assert spec.params_m == pytest.approx(_meta_count("llama", {k: v for k, v in _llama(512, 8).items()
                                                                    if k != "model_type"}) / 1e6)
        assert distill.working_gb > 2.0  # from the models' dimensions, not the flat default
        assert kv_cache_gb(spec, 1, 1) * GB == 2 * 8 * (512 // 8 * 2) * 2  # 2 of 8 heads: a quarter of the width
    capsys.readouterr()


@pytest.mark.parametrize("case", ["one token differs", "another eos", "another size"])
def test_models_with_different_vocabularies_are_refused_naming_the_difference(case, tmp_path, capsys):
    other = list(TOKENS)
    if case == "one token differs":
        other[57] = "zebra"
    elif case == "another eos":
        other[0], other[1] = other[1], other[0]
    big = _model_dir(tmp_path, "big", _llama(1024, 16))
    small = _model_dir(tmp_path, "small", _llama(512, 8, vocab=100_000 if case == "another size" else 200), other)
    rc = plan_main(["--chain", f"{big},{small}", "--run-dir", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and not (tmp_path / "run").exists()
    expected = {"one token differs": "token id 57 is 'tok57' in one and 'zebra' in the other",
                "another eos": "token id 0 is '</s>' in one and 'tok1' in the other",
                "another size": f"{big} has a vocabulary of 200 tokens, {small} 100000"}[case]
    assert expected in err, err


def test_a_given_teacher_is_evaluated_for_the_report(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    cache_snapshot(tmp_path / "hf" / "hub", "facebook/opt-125m", {"tokenizer.json": _tokenizer_json(TOKENS)})
    teacher = _model_dir(tmp_path, "my-opt-13b-sft", json.loads((DATA / "configs" / "opt-13b.json").read_text()))
    stages = {s.name: s for s in build_plan(["opt-13b", "opt-1.3b"], run_dir=tmp_path / "run", profile=ChainProfile(),
                                            teacher_path=str(teacher))}
    ev = stages["eval-teacher"]
    assert "sft-opt-13b" not in stages and ev.depends_on == [] and ev.label == "teacher"
    assert ev.config.model == str(teacher) and ev.config.meta["label"] == "teacher"
