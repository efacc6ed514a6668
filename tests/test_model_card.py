"""Exported models follow HF conventions: a model card that says how the model was made and what it scored, a
generation_config.json that samples as the evaluation did, an optional push from a login node; prompts in the
reference's template or the tokenizer's chat template."""

from __future__ import annotations

import shutil

import pytest

from takd.chain.prepare import main as prepare_main
from takd.models import cards

CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")


def test_a_stage_hands_off_its_card_and_generation_config_and_evaluation_fills_the_card(trained_teacher, tmp_path):
    from transformers import GenerationConfig

    from takd.evaluate.config import EvalJob
    from takd.evaluate.run import run_evaluation

    model = tmp_path / "final"
    shutil.copytree(trained_teacher, model)
    card = (model / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: transformers\n")
    assert "`tiny-m` trained by supervised fine-tuning with takd" in card and "| `optim.lr` | 0.002 |" in card
    assert "| `max_steps` | 120 |" in card and card.count(cards.EVAL_BEGIN) == 1  # (other tests evaluate it too)
    gen = GenerationConfig.from_pretrained(model)  # transformers reads it back as the model's default sampling
    assert (gen.do_sample, gen.temperature, gen.top_k, gen.top_p, gen.max_new_tokens) == (True, 1.0, 0, 1.0, 32)

    df = run_evaluation(EvalJob(model=str(model), datasets=["builtin"], seeds=[10, 20], max_prompts=4,
                                max_new_tokens=8, output_dir=str(tmp_path / "e"), reverse_kl=False))
    card = (model / "README.md").read_text()
    rouge = df[df["metric"] == "rouge_l"]["value"].mean()
    assert f"| builtin | rouge_l | {rouge:.2f} |" in card and cards.NOT_EVALUATED not in card
    assert card.count(cards.EVAL_BEGIN) == 1 and card.rstrip().endswith("the response length above), so "
                                                                       "`model.generate(**inputs)` samples as the "
                                                                       "evaluation did.")


def test_evaluation_rewrites_only_takd_cards(tmp_path):
    theirs = tmp_path / "README.md"
    theirs.write_text("# Someone's model\n")
    assert not cards.add_evaluation(tmp_path, "| x |") and theirs.read_text() == "# Someone's model\n"
    assert not cards.add_evaluation(tmp_path / "missing", "| x |")
    theirs.write_text(f"head\n{cards.EVAL_BEGIN}\nold\n{cards.EVAL_END}\ntail\n")
    assert cards.add_evaluation(tmp_path, "| new |")
    assert theirs.read_text() == f"head\n{cards.EVAL_BEGIN}\n| new |\n{cards.EVAL_END}\ntail\n"
    assert cards.run_id(tmp_path / "run-7" / "stages" / "minillm-a-to-b") == "run-7"
    stage = {"name": "s", "method": "kd", "teacher": "t", "dataset": "builtin", "output_dir": str(tmp_path / "s"),
             "max_prompt_tokens": 8, "max_new_tokens": 4, "optim": {"lr": 1e-4}, "kd": {"kd_ratio": 0.5}}
    fresh = cards.model_card(stage, base="b", base_hub_id=None, version="0", commit="c")
    assert cards.NOT_EVALUATED in fresh and "| `kd.kd_ratio` | 0.5 |" in fresh and "base_model" not in fresh


class FakeHub:
    """Records what takd asks of huggingface_hub; no network."""

    calls: list = []

    def create_repo(self, repo_id, private, exist_ok):
        FakeHub.calls.append(("create", repo_id, private, exist_ok))
        return f"https://huggingface.co/{repo_id}"

    def upload_folder(self, folder_path, repo_id, ignore_patterns, commit_message):
        FakeHub.calls.append(("upload", folder_path, repo_id, tuple(ignore_patterns), commit_message))


def test_push_uploads_a_finished_model_without_takds_markers(trained_teacher, tmp_path, monkeypatch, capsys):
    import huggingface_hub

    import takd.chain.prepare as prep

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeHub)
    monkeypatch.setattr(prep, "hub_reachable", lambda *a, **k: True)
    FakeHub.calls = []
    assert prepare_main(["--push", str(trained_teacher), "--repo-id", "lab/tiny-teacher"]) == 0
    assert FakeHub.calls[0] == ("create", "lab/tiny-teacher", True, True)
    _, folder, repo, ignored, _ = FakeHub.calls[1]
    assert (folder, repo) == (str(trained_teacher), "lab/tiny-teacher") and {"COMPLETE", "takd_model.json"} <= set(
        ignored)
    assert "private) -> https://huggingface.co/lab/tiny-teacher" in capsys.readouterr().out

    unfinished = tmp_path / "final"
    shutil.copytree(trained_teacher, unfinished)
    (unfinished / "COMPLETE").unlink()
    for argv, says in [(["--push", str(unfinished), "--repo-id", "lab/x"], "not a finished model directory"),
                       (["--push", str(trained_teacher)], "--push needs --repo-id"),
                       (["--push", str(trained_teacher), "--repo-id", "no-owner"], "must be <user or organisation>")]:
        FakeHub.calls = []
        assert prepare_main(argv) == 2 and not FakeHub.calls
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and says in err[0], err


def test_chat_prompts_use_the_tokenizers_template_and_need_one(tmp_path):
    from takd.config import ConfigError
    from takd.data.examples import encode_rows
    from takd.models.loading import load_tokenizer_for

    tok = load_tokenizer_for("tiny-s")
    row = {"instruction": "Name a colour.", "input": "", "output": "Blue."}
    with pytest.raises(ConfigError, match="has no chat template; use prompt_format: alpaca"):
        encode_rows([row], tok, 64, 8, prompt_format="chat")
    tok = load_tokenizer_for("tiny-s")
    tok.chat_template = CHAT_TEMPLATE
    (chat,) = encode_rows([row], tok, 64, 8, prompt_format="chat")
    (alpaca,) = encode_rows([row], tok, 64, 8)
    assert tok.decode(chat.prompt_ids) == "<|user|>Name a colour.\n<|assistant|>\n"
    assert tok.decode(alpaca.prompt_ids).startswith("Below is an instruction")  # no BOS: the reference adds none
    assert chat.response_ids[-1] == tok.eos_token_id and tok.decode(chat.response_ids[:-1]) == "Blue."


def test_a_chat_chain_is_planned_in_chat_everywhere_or_refused_before_anything_is_written(tmp_path, capsys):
    from takd.chain.cli import main as plan_main

    assert plan_main(["--chain", "tiny-m,tiny-s", "--run-dir", str(tmp_path / "alpaca")]) == 0
    run = tmp_path / "chat"
    assert plan_main(["--chain", "tiny-m,tiny-s", "--run-dir", str(run), "--set", "prompt_format=chat"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "prompt_format chat, but the tokenizer of tiny-" in err[0] and not run.exists()


def test_planned_evaluations_use_their_stages_prompt_format(tmp_path):
    from takd.chain.plan import build_plan
    from takd.chain.profiles import ChainProfile

    profile = ChainProfile(common={"prompt_format": "chat"})
    stages = build_plan(["tiny-m", "tiny-s"], run_dir=tmp_path, profile=profile)
    evals = [s for s in stages if s.kind == "eval"]
    assert len(evals) >= 3 and {s.config.prompt_format for s in stages} == {"chat"}
