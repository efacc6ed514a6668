"""Evaluation protocol: Rouge-L equals rouge_score, seeded sampling, ExAccErr, ECE, the LLM-judge client, CLI."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pandas as pd
import pytest
import torch
from rouge_score import rouge_scorer

from takd.data.examples import encode_rows
from takd.data.rows import load_rows
from takd.evaluate.calibration import calibration, expected_calibration_error
from takd.evaluate.cli import main as evaluate_main
from takd.evaluate.exposure_bias import exposure_bias
from takd.evaluate.generation import generate
from takd.evaluate.judge import JudgeClient, JudgeUnavailable, judge_ratio, parse_scores
from takd.evaluate.metrics import exact_match, mean_ci95, rouge_l
from takd.models.loading import load_model
from tests.conftest import needs_shared


def test_rouge_l_equals_rouge_score_with_stemming_and_max_over_references():
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    pred = "The cats are running quickly to the house"
    refs = ["A cat runs to the house quickly", "Dogs bark"]
    want = 100 * max(scorer.score(r, pred)["rougeL"].fmeasure for r in refs)
    assert rouge_l(pred, refs) == pytest.approx(want)
    assert rouge_l("cats running", ["cat runs"]) == pytest.approx(100.0)  # Porter stemming
    assert exact_match("The answer.", ["answer"]) == 100.0 and exact_match("no", ["yes"]) == 0.0


def test_mean_ci95_hand_case():
    mean, half = mean_ci95([1.0, 2.0, 3.0])
    assert mean == 2.0 and half == pytest.approx(4.303 * 1.0 / 3**0.5)


def test_seeds_change_samples_and_the_same_seed_reproduces(tokenizer):
    model = load_model("tiny-s")
    ex = encode_rows(load_rows("builtin", "test"), tokenizer, 128, 12, with_response=False)[:6]
    a = generate(model, tokenizer, ex, seed=10, max_new_tokens=12)
    b = generate(model, tokenizer, ex, seed=10, max_new_tokens=12, batch_size=4)
    c = generate(model, tokenizer, ex, seed=20, max_new_tokens=12)
    assert a == generate(model, tokenizer, ex, seed=10, max_new_tokens=12) and a != c
    state = torch.get_rng_state()
    generate(model, tokenizer, ex, seed=30, max_new_tokens=4)
    assert torch.equal(state, torch.get_rng_state())  # evaluation leaves the training RNG alone
    assert len(b) == 6


def test_exposure_bias_is_zero_for_identical_models_and_finite_otherwise(tokenizer):
    ex = encode_rows(load_rows("builtin", "valid"), tokenizer, 128, 8, with_response=False)[:4]
    s = load_model("tiny-s")
    same = exposure_bias(s, s, tokenizer, ex, max_new_tokens=8)
    assert same["ex_acc_err"] == [0.0] * 8 and max(same["R"]) == pytest.approx(0.0, abs=1e-6)
    other = exposure_bias(s, load_model("tiny-m"), tokenizer, ex, max_new_tokens=8)
    assert all(b >= a - 1e-9 for a, b in zip(other["R"], other["R"][1:], strict=False))  # cumulative
    assert other["eps"][-1] > 0 and all(abs(v) < 1e6 for v in other["ex_acc_err"])


def test_held_out_reverse_kl_is_zero_against_itself_and_matches_the_minillm_log(tokenizer, tmp_path):
    """The evaluation's reverse KL is the one MiniLLM logs at validation (same prompts, seed and samples), and a
    model measured against itself is at 0 exactly."""
    from takd.evaluate.config import EvalJob
    from takd.evaluate.run import run_evaluation
    from takd.train.config import stage_config
    from takd.train.run import trainer_for

    job = dict(model="tiny-s", datasets=["builtin"], seeds=[10], max_prompts=8, max_new_tokens=12, batch_size=4,
               output_dir=str(tmp_path / "e"), calibration=None)
    values = {}
    for teacher in ("tiny-s", "tiny-m"):
        df = run_evaluation(EvalJob(**job, teacher=teacher))
        values[teacher] = df.set_index("metric")["value"].to_dict()
    # random inits are near-uniform, so two of them are close but not equal
    assert values["tiny-s"]["rev_kl"] == pytest.approx(0.0, abs=1e-6) and values["tiny-m"]["rev_kl"] > 0.01
    assert 0.0 <= values["tiny-m"]["eos_rate"] <= 100.0 and 1 <= values["tiny-m"]["response_len"] <= 12

    cfg = stage_config("minillm", name="m", student="tiny-s", teacher="tiny-m", output_dir=str(tmp_path / "m"),
                       max_new_tokens=12, max_prompt_tokens=128, seed=10, tensorboard=False)
    trainer = trainer_for(cfg)
    trainer.setup()
    examples = encode_rows(load_rows("builtin", "test"), trainer.tokenizer, 128, 12, with_response=False)[:8]
    rkl, length = trainer.collector.student_rev_kl(examples, seed=10)
    assert rkl == pytest.approx(values["tiny-m"]["rev_kl"], rel=1e-5)
    assert length == pytest.approx(values["tiny-m"]["response_len"], rel=1e-6)


def test_ece_perfectly_calibrated_vs_overconfident():
    g = torch.Generator().manual_seed(0)
    conf = torch.rand(20000, generator=g) * 0.5 + 0.5
    correct = (torch.rand(20000, generator=g) < conf).float()  # right with probability = confidence
    assert expected_calibration_error(conf, correct) < 0.02
    over = torch.full((1000,), 0.99)
    half_right = (torch.arange(1000) % 2 == 0).float()
    assert expected_calibration_error(over, half_right) == pytest.approx(0.49, abs=1e-6)


def test_calibration_runs_on_builtin_classification_items(trained_teacher, tokenizer):
    rows = load_rows("builtin", "test")
    res = calibration(load_model(str(trained_teacher)), tokenizer, rows)
    assert res["items"] == sum(1 for r in rows if "labels" in r) > 20
    assert 0.0 <= res["ece"] <= 1.0 and 0.0 <= res["accuracy"] <= 100.0


class _Judge(BaseHTTPRequestHandler):
    calls: list = []
    fail_first = 2

    def do_POST(self):  # noqa: N802 (http.server's name)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        _Judge.calls.append((self.headers.get("Authorization"), body))
        if len(_Judge.calls) <= _Judge.fail_first:
            self.send_response(500)
            self.end_headers()
            return
        reply = {"choices": [{"message": {"content": "8 6\nAssistant 2 is shorter."}}]}
        data = json.dumps(reply).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


def test_judge_client_retries_parses_and_sends_the_key(monkeypatch, capsys):
    server = HTTPServer(("127.0.0.1", 0), _Judge)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("TAKD_JUDGE_API_KEY", "sk-secret-123")
    _Judge.calls = []
    try:
        client = JudgeClient(f"http://127.0.0.1:{server.server_port}/v1", "judge-model", backoff_s=0.01)
        res = judge_ratio(client, [("What is 2+2?", "4", "four"), ("Name a colour.", "red", "blue")])
    finally:
        server.shutdown()
    assert len(_Judge.calls) == 4  # two HTTP 500s retried, then two answers
    assert res["judge_ratio"] == pytest.approx(100 * 12 / 16)
    assert _Judge.calls[-1][0] == "Bearer sk-secret-123" and _Judge.calls[-1][1]["model"] == "judge-model"
    assert "sk-secret" not in capsys.readouterr().out
    assert parse_scores("7.5, 9") == (7.5, 9.0)
    with pytest.raises(ValueError):
        parse_scores("I think both are fine")


def test_judge_unreachable_is_a_clear_error():
    client = JudgeClient("http://127.0.0.1:9/v1", "m", timeout_s=2, backoff_s=0.01)  # nothing listens on port 9
    with pytest.raises(JudgeUnavailable, match="unreachable"):
        client.score("q", "a", "b")


def test_evaluate_cli_writes_the_tidy_table(tmp_path, trained_teacher):
    out = tmp_path / "eval"
    rc = evaluate_main(["--model", str(trained_teacher), "--datasets", "builtin", "--seeds", "10,20",
                        "--max-prompts", "12", "--max-new-tokens", "16", "--out", str(out), "--exposure-bias",
                        "--teacher", "tiny-m", "--calibration", "builtin"])
    assert rc == 0
    df = pd.read_csv(out / "results.csv")
    assert {"model", "dataset", "seed", "metric", "value"} <= set(df.columns)
    rl = df[(df["dataset"] == "builtin") & (df["metric"] == "rouge_l")]
    assert sorted(rl["seed"]) == [10, 20]
    assert {"ex_acc_err", "ece", "accuracy", "exact_match"} <= set(df["metric"])
    gens = (out / "builtin.gen.jsonl").read_text().splitlines()
    assert len(gens) == 24


@needs_shared
def test_evaluate_on_selfinst_with_a_real_vocabulary(tmp_path):
    out = tmp_path / "eval"
    rc = evaluate_main(["--model", "tiny-gpt2bpe-s", "--datasets", "selfinst", "--seeds", "10",
                        "--max-new-tokens", "8", "--batch-size", "32", "--out", str(out)])
    assert rc == 0
    df = pd.read_csv(out / "results.csv")
    n = len((out / "selfinst.gen.jsonl").read_text().splitlines())
    # no teacher: no reverse KL, but every model's answers are measured for EOS endings and length
    assert 240 <= n <= 252 and set(df["metric"]) == {"rouge_l", "exact_match", "eos_rate", "response_len"}
