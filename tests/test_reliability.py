"""Hostile inputs and faults: one clear line before anything runs, nothing lost, nothing leaked.

Every bad value below exits with one `error:` line, writes nothing and submits nothing; every fault below (a
truncated checkpoint, a torn metrics line, a kill before the first checkpoint or in a best-checkpoint swap, a
second writer, a deleted `final/`, a moved run, a changed config, a full or read-only disk) is survived with no
optimizer step lost or run twice; the judge's key never appears anywhere.
"""

from __future__ import annotations

import errno
import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest
import yaml

from takd import checkpoint as ckpt
from takd.chain.cli import main as plan_main
from takd.train.config import stage_config

REPO = Path(__file__).resolve().parent.parent
TINY = "tiny-l,tiny-m,tiny-s"


def _one_error(capsys) -> str:
    err = capsys.readouterr().err
    lines = [x for x in err.strip().splitlines() if x.startswith("error:")]
    assert len(lines) == 1, err
    return lines[0]


def _file(tmp_path: Path, name: str, content: bytes | str) -> Path:
    f = tmp_path / name
    f.write_bytes(content if isinstance(content, bytes) else content.encode())
    return f


def _model_dir(tmp_path: Path, name: str, vocab: int = 1024, layers: int = 2, hidden: int = 64,
               complete: bool = True) -> Path:
    d = tmp_path / name
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"model_type": "opt", "vocab_size": vocab, "hidden_size": hidden,
                                               "num_hidden_layers": layers}))
    if complete:
        (d / "model.safetensors").write_text("x")
        (d / "tokenizer.json").write_text("{}")
    return d


# ------------------------------------------------------------------------------------------ the planner
BOMB = "a: &a [x, x]\n" + "".join(f"{c}: &{c} [{', '.join(['*' + p] * 9)}]\n"
                                  for p, c in zip("abcdefghijkl", "bcdefghijklm", strict=True))
PLAN_CASES = {  # name: (extra argv, files to create {name: content}, expected text in the one error line)
    "account with a newline": (["--cluster", "narval", "--account", "def-x\n#SBATCH --x"], {}, "not an account name"),
    "account with shell characters": (["--cluster", "narval", "--account", "def-x;rm -rf ~"], {},
                                      "not an account name"),
    "set a planner-owned key": (["--set", "output_dir=/elsewhere"], {}, "the planner sets output_dir"),
    "set the name": (["--set", "name=x"], {}, "the planner sets name"),
    "zero new tokens": (["--set", "max_new_tokens=0"], {}, "max_new_tokens and max_prompt_tokens must be >= 1"),
    "zero log interval": (["--set", "log_every_steps=0"], {}, "log_every_steps must be >= 1"),
    "infinite lr": (["--set", "optim.lr=.inf"], {}, "expected a finite number"),
    "nan lr": (["--set", "optim.lr=.nan"], {}, "expected a finite number"),
    "negative eval prompts": (["--set", "eval_prompts=-1"], {}, "eval_every_steps, eval_prompts and seed must be"),
    "negative seed": (["--set", "seed=-1"], {}, "seed must be >= 0"),
    "beyond the model's positions": (["--set", "max_new_tokens=600"], {}, "attends over at most 512"),
    "zero rollout batch": (["--set", "minillm.rollout_batch_size=0"], {}, "rollout_batch_size must be >= 1"),
    "one-token PT chunks": (["--set", "minillm.pt_chunk_tokens=1"], {}, "pt_chunk_tokens must be >= 2"),
    "min_lr above lr": (["--set", "optim.min_lr=1.0"], {}, "optim.min_lr must be in [0, optim.lr]"),
    "batch not a multiple of the micro-batch": (["--set", "batch_size=30", "--set", "micro_batch_size=16"], {},
                                                "batch_size=30 must be a multiple of micro_batch_size=16"),
    "override without a value": (["--set", "nonsense"], {}, "expected key=value"),
    "unknown prompt format": (["--set", "prompt_format=html"], {}, "prompt_format: expected one of 'alpaca' | 'chat'"),
    "override no stage has": (["--method", "kd", "--set", "minillm.gamma=1"], {}, "no stage of this plan has"),
    "teacher path that does not exist": (["--teacher-path", "/nonexistent/teacher"], {}, "no such directory"),
    "cluster name with a path": (["--cluster", "../clusters/narval"], {}, "unknown cluster"),
    "unknown baseline": (["--baselines", "dpo"], {}, "unknown baseline 'dpo'"),
    "binary profile": (["--profile", "{bin}"], {"bin": b"\x00\x01\xff\xfe"}, "not a text file"),
    "empty profile": (["--profile", "{empty}"], {"empty": ""}, "is empty"),
    "alias bomb profile": (["--profile", "{bomb}"], {"bomb": BOMB}, "YAML aliases"),
    "oversized profile": (["--profile", "{big}"], {"big": "# " + "x" * 1_100_000 + "\n"}, "too large"),
    "profile with a syntax error": (["--profile", "{syntax}"], {"syntax": "dataset: [unclosed\n"}, "not valid YAML"),
    "profile with an unknown dataset": (["--profile", "{ds}"], {"ds": "dataset: dollyy\n"}, "unknown dataset"),
    "profile with a typo in a method section": (["--profile", "{typo}"], {"typo": "distill: {minillm: {alhpa: 1}}\n"},
                                                "unknown key 'alhpa'"),
    "profile with an unknown top-level key": (["--profile", "{top}"], {"top": "datasett: builtin\n"},
                                              "unknown key 'datasett'"),
    "resume without a plan": (["--resume", "{nothing}"], {}, "no plan.yaml there"),
}


@pytest.mark.parametrize("case", sorted(PLAN_CASES))
def test_bad_plan_input_is_one_line_and_nothing_is_written(case, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("SLURM_ACCOUNT", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    extra, files, expected = PLAN_CASES[case]
    made = {name: str(_file(tmp_path, name, content)) for name, content in files.items()}
    made["nothing"] = str(tmp_path / "nothing")
    argv = [a.format(**made) if a.startswith("{") else a for a in extra]
    run = tmp_path / "run"
    base = [] if "--resume" in argv else ["--chain", TINY]
    rc = plan_main(base + argv + ["--submit", "--run-dir", str(run), "--executor", "debug"])
    line = _one_error(capsys)
    assert rc == 2 and expected in line, line
    assert not run.exists()


@pytest.mark.parametrize("case", ["missing", "incomplete", "other vocabulary", "not larger"])
def test_a_bad_teacher_path_is_refused_before_anything_is_written(case, tmp_path, capsys):
    teacher = {"missing": lambda: tmp_path / "absent",
               "incomplete": lambda: _model_dir(tmp_path, "t", complete=False),
               "other vocabulary": lambda: _model_dir(tmp_path, "t", vocab=50272, layers=12, hidden=768),
               "not larger": lambda: _model_dir(tmp_path, "t", layers=1, hidden=16)}[case]()
    run = tmp_path / "run"
    rc = plan_main(["--chain", "tiny-l,tiny-s", "--teacher-path", str(teacher), "--submit", "--run-dir", str(run),
                    "--executor", "debug"])
    line = _one_error(capsys)
    want = {"missing": "no such directory", "incomplete": "not a complete model directory (missing: weights",
            "other vocabulary": "has a vocabulary of 50272 tokens", "not larger": "is not larger than the student"}
    assert rc == 2 and want[case] in line, line
    assert not run.exists()


@pytest.mark.parametrize("case", ["empty plan.yaml", "binary plan.yaml", "plan.yaml of something else"])
def test_a_broken_plan_file_on_resume_is_one_line(case, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    content = {"empty plan.yaml": b"", "binary plan.yaml": b"\x00\xff", "plan.yaml of something else": b"a: 1\n"}
    (run / "plan.yaml").write_bytes(content[case])
    rc = plan_main(["--resume", str(run), "--executor", "debug"])
    line = _one_error(capsys)
    assert rc == 2 and ("is empty" in line or "not a text file" in line or "not a takd plan" in line), line


def test_a_slurm_run_directory_with_shell_characters_is_refused(tmp_path, capsys):
    run = tmp_path / "my run"
    rc = plan_main(["--chain", TINY, "--submit", "--run-dir", str(run), "--executor", "slurm"])
    assert rc == 2 and "contains a space, quote or shell character" in _one_error(capsys)
    assert not run.exists()


def test_every_field_that_reaches_an_sbatch_script_is_quoted_or_refused(tmp_path, capsys, monkeypatch):
    """Hostile values in every field of the script: the account is refused (above); the run directory too; the
    environment exported to the job is quoted so the shell reads back exactly the value; stage and job names come
    from sanitized model names."""
    hostile = "/tmp/x $(touch /tmp/pwned) `id`;\necho injected"
    monkeypatch.setenv("TAKD_HOME", hostile)
    monkeypatch.setenv("HF_HOME", hostile + "'\"")
    model = _model_dir(tmp_path, "my model; rm -rf ~", vocab=1024, layers=1, hidden=16)
    from takd.models.registry import write_model_meta

    write_model_meta(model, base="tiny-s")
    monkeypatch.setattr("takd.chain.cli.check_offline", lambda *a: None)
    rc = plan_main(["--chain", f"tiny-l,{model}", "--cluster", "local", "--run-dir", str(tmp_path / "run"),
                    "--show-sbatch", "init-my-model--rm--rf--"])
    captured = capsys.readouterr()
    out = captured.out
    assert rc == 0, captured.err
    lines = out.splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("export "))
    last = max(i for i, line in enumerate(lines) if line.startswith("export "))
    block = "\n".join(lines[first:last + 1])
    while True:  # a quoted value may span lines: take lines until the block parses as whole words
        try:
            shlex.split(block)
            break
        except ValueError:
            last += 1
            block = "\n".join(lines[first:last + 1])
    # the shell itself reads the block back: nothing runs, each value arrives exactly
    shown = subprocess.run(["bash", "-c", block + '\nprintf "%s\\0%s" "$TAKD_HOME" "$HF_HOME"'],
                           capture_output=True, text=True, cwd=tmp_path, check=True)
    assert shown.stdout.split("\0") == [hostile, hostile + "'\""]
    assert shown.stderr == "" and not Path("/tmp/pwned").exists()
    assert "#SBATCH --job-name=takd-init-my-model--rm--rf--" in out


# ------------------------------------------------------------------------------------------ train / evaluate
def _train(argv: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "takd.train", *argv], cwd=REPO, capture_output=True, text=True,
                          timeout=600, env={**os.environ, "TAKD_RUNS": str(tmp_path)})


TRAIN_CASES = {  # name: (stage YAML or bytes, overrides, expected)
    "binary config": (b"\x00\x01\xfe", [], "not a text file"),
    "empty config": ("", [], "is empty"),
    "unknown key": ("method: sft\nmax_stepz: 3\n", [], "unknown key 'max_stepz'"),
    "wrong type override": ("method: sft\n", ["optim.lr=fast"], "optim.lr: expected float"),
    "bad method": ("method: dpo\n", [], "expected one of 'sft', 'kd', 'seqkd', 'minillm'"),
    "hostile name": ("method: sft\nname: '../../etc'\n", [], "must be letters, digits"),
    "kd without teacher": ("method: kd\n", [], "needs a teacher"),
}


@pytest.mark.parametrize("case", sorted(TRAIN_CASES))
def test_bad_train_config_is_one_line(case, tmp_path):
    content, overrides, expected = TRAIN_CASES[case]
    f = _file(tmp_path, "stage.yaml", content)
    done = _train(["--config", str(f), *overrides], tmp_path)
    lines = [x for x in done.stderr.splitlines() if x.startswith("error:")]
    assert done.returncode == 2 and len(lines) == 1 and expected in lines[0], done.stderr[-2000:]
    assert "Traceback" not in done.stderr


DATA_CASES = {  # dataset file content -> expected error, at the stage's start
    "malformed JSONL": ('{"instruction": "a", "output": "b"}\n{not json\n', "line 2 is not JSON"),
    "empty dataset": ("\n", "no rows (an empty dataset)"),
    "rows without output": ('{"instruction": "a"}\n',
                            "row 1 needs `instruction` (text; or the full `prompt`) and `output`"),
    "not UTF-8": (b"\xff\xfe\x00", "not a UTF-8 text file"),
}


@pytest.mark.parametrize("case", sorted(DATA_CASES))
def test_a_bad_dataset_file_is_one_line(case, tmp_path):
    content, expected = DATA_CASES[case]
    data = _file(tmp_path, "data.jsonl", content)
    f = _file(tmp_path, "stage.yaml", yaml.safe_dump({"method": "sft", "dataset": str(data), "max_steps": 1,
                                                      "output_dir": str(tmp_path / "out"), "tensorboard": False}))
    done = _train(["--config", str(f)], tmp_path)
    lines = [x for x in done.stderr.splitlines() if x.startswith("error:")]
    assert done.returncode == 2 and len(lines) == 1 and expected in lines[0], done.stderr[-2000:]


EVAL_CASES = {
    "seeds that are not numbers": (["--model", "tiny-s", "--seeds", "a,b"], "seeds[0]: expected int"),
    "a model path that does not exist": (["--model", "/nonexistent/final"], "unknown model"),
    "a hub model not prepared": (["--model", "facebook/opt-125m"], "python -m takd.prepare --models"),
    "exposure bias without a teacher": (["--model", "tiny-s", "--exposure-bias"], "--exposure-bias needs --teacher"),
    "negative max prompts": (["--model", "tiny-s", "--max-prompts", "-1"], "eval.max_prompts must be >= 0"),
}


@pytest.mark.parametrize("case", sorted(EVAL_CASES))
def test_bad_evaluate_input_is_one_line(case, tmp_path, monkeypatch, capsys):
    from takd.evaluate.cli import main as evaluate_main

    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    argv, expected = EVAL_CASES[case]
    rc = evaluate_main([*argv, "--out", str(tmp_path / "out"), "--max-new-tokens", "4", "--max-prompts", "2"]
                       if "--max-prompts" not in argv else [*argv, "--out", str(tmp_path / "out")])
    line = _one_error(capsys)
    assert rc == 2 and expected in line, line
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------------ secrets
class _EchoJudge(BaseHTTPRequestHandler):
    """A misbehaving endpoint: every other reply echoes the request, headers included; the rest score."""

    calls = 0

    def do_POST(self):  # noqa: N802
        body = self.rfile.read(int(self.headers["Content-Length"]))
        _EchoJudge.calls += 1
        echo = f"{self.headers}\n{body.decode()}"
        content = echo if _EchoJudge.calls % 2 else "7 5\nfine"
        data = json.dumps({"choices": [{"message": {"content": content}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


def test_the_judge_key_never_appears_and_malformed_replies_skip_one_item(tmp_path, monkeypatch, capfd):
    from takd.evaluate.cli import main as evaluate_main

    secret = "sk-test-secret-0123456789"
    monkeypatch.setenv("TAKD_JUDGE_API_KEY", secret)
    server = HTTPServer(("127.0.0.1", 0), _EchoJudge)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        rc = evaluate_main(["--model", "tiny-s", "--seeds", "10", "--max-prompts", "4", "--max-new-tokens", "4",
                            "--out", str(tmp_path / "out"), "--judge-url", f"http://127.0.0.1:{server.server_port}/v1"])
    finally:
        server.shutdown()
    out, err = capfd.readouterr()
    assert rc == 0
    assert secret not in out + err and "Bearer sk-" not in out + err
    for f in (tmp_path / "out").rglob("*"):
        assert not f.is_file() or secret not in f.read_text(errors="replace"), f
    assert "judge_ratio" in out and "2 skipped" in out  # echoed replies skipped, the others kept


# ------------------------------------------------------------------------------------------ faults
SMALL = dict(max_new_tokens=8, max_prompt_tokens=128, eval_prompts=4, tensorboard=False, select_by="last",
             eval_every_steps=0, log_every_steps=1, batch_size=8, micro_batch_size=8)


def _sft(out: Path, steps: int = 6, **fields):
    cfg = stage_config("sft", name="s", student="tiny-s", output_dir=str(out), max_steps=steps, save_every_steps=2,
                       keep_checkpoints=5, **{**SMALL, **fields})
    cfg.optim.lr = 1e-3
    return cfg


def _steps(out: Path) -> list[int]:
    from takd.train.metrics_log import read_metrics

    return [r["step"] for r in read_metrics(out / "metrics.jsonl") if r["kind"] == "train"]


def _cut_after(ref: Path, cut: Path, step: int) -> None:
    """`cut`: the reference run as a kill after `step` would have left it (later checkpoints and hand-offs gone)."""
    shutil.copytree(ref, cut)
    for d in ("final", "best"):
        shutil.rmtree(cut / d, ignore_errors=True)
    for d in ckpt.list_checkpoints(cut / "checkpoints"):
        if ckpt.step_of(d) > step:
            shutil.rmtree(d)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    from takd.train.run import run_stage

    out = tmp_path_factory.mktemp("ref") / "s"
    run_stage(_sft(out))
    return out


def _resumes_without_loss(reference: Path, cut: Path, capsys=None) -> str:
    from takd.train.run import run_stage

    run_stage(_sft(cut))
    assert _steps(cut) == list(range(1, 7))  # every step once
    return capsys.readouterr().out if capsys else ""


@pytest.mark.parametrize("broken", ["weights", "trainer state", "optimizer state"])
def test_a_truncated_newest_checkpoint_falls_back_to_the_previous_one(broken, reference, tmp_path, capsys):
    cut = tmp_path / "s"
    _cut_after(reference, cut, 4)
    newest = cut / "checkpoints" / "step-000004"
    target = {"weights": "model.safetensors", "trainer state": "trainer_state.pt",
              "optimizer state": "optimizer.pt"}[broken]
    data = (newest / target).read_bytes()
    (newest / target).write_bytes(data[: len(data) // 3])  # a full disk's or a dying node's half file
    out = _resumes_without_loss(reference, cut, capsys)
    assert "cannot be resumed from" in out and "resumed from" in out and "step-000002 at step 2" in out


def test_a_torn_metrics_line_is_dropped_and_status_and_report_still_read_the_run(reference, tmp_path, capsys):
    from takd.report.build import training_curves

    cut = tmp_path / "run" / "stages" / "s"
    _cut_after(reference, cut, 4)
    with open(cut / "metrics.jsonl", "a") as fh:
        fh.write('{"step": 5, "kind": "tr')  # killed mid-write
    assert not training_curves(tmp_path / "run").empty
    _resumes_without_loss(reference, cut)


def test_a_kill_before_the_first_checkpoint_leaves_no_duplicated_rows(reference, tmp_path):
    cut = tmp_path / "s"
    cut.mkdir()
    shutil.copy2(reference / "metrics.jsonl", cut / "metrics.jsonl")  # rows of steps that will run again
    _resumes_without_loss(reference, cut)


def test_a_kill_in_the_best_checkpoint_swap_leaves_a_best_and_no_debris(reference, tmp_path, capsys):
    cut = tmp_path / "s"
    _cut_after(reference, cut, 4)
    best = reference / "final"  # a complete HF directory standing in for the previous best/
    shutil.copytree(best, cut / ".old-best-1a2b3c4d")  # the swap renamed best/ aside and was killed
    (cut / ".tmp-best-deadbeef").mkdir()  # and the new copy never finished
    out = _resumes_without_loss(reference, cut, capsys)
    assert "restored" in out and not list(cut.glob(".old-*")) and not list(cut.glob(".tmp-*"))
    assert ckpt.is_complete(cut / "best") or ckpt.is_complete(cut / "final")


def test_a_second_writer_is_refused_and_a_dead_writers_lock_is_taken_over(tmp_path):
    cfg_file = _file(tmp_path, "stage.yaml", yaml.safe_dump({**SMALL, "method": "sft", "name": "s",
                                                              "output_dir": str(tmp_path / "s"), "max_steps": 2}))
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / "s").mkdir()
        (tmp_path / "s" / "LOCK").write_text(json.dumps({"host": os.uname().nodename, "pid": str(holder.pid)}))
        done = _train(["--config", str(cfg_file)], tmp_path)
        assert done.returncode == 2 and f"pid {holder.pid}" in done.stderr and "another run" in done.stderr
    finally:
        holder.kill()
        holder.wait()
    done = _train(["--config", str(cfg_file)], tmp_path)  # its holder is gone now
    assert done.returncode == 0, done.stderr[-2000:]
    assert not (tmp_path / "s" / "LOCK").exists() and ckpt.is_complete(tmp_path / "s" / "final")


def test_a_changed_config_is_refused_on_resume_and_force_config_starts_afresh(reference, tmp_path):
    cut = tmp_path / "s"
    _cut_after(reference, cut, 4)
    cfg = {**SMALL, "method": "sft", "name": "s", "student": "tiny-s", "output_dir": str(cut), "max_steps": 6,
           "save_every_steps": 2, "keep_checkpoints": 5, "optim": {"lr": 2e-3}}
    f = _file(tmp_path, "stage.yaml", yaml.safe_dump(cfg))
    done = _train(["--config", str(f)], tmp_path)
    assert done.returncode == 2 and "made with another config (optim.lr: 0.001 -> 0.002)" in done.stderr
    done = _train(["--config", str(f), "--force-config"], tmp_path)
    assert done.returncode == 0 and "old checkpoints moved to" in done.stdout
    assert _steps(cut) == list(range(1, 7)) and (cut / "checkpoints.replaced-step-000004").is_dir()


def test_a_longer_max_steps_resumes_the_same_run_saying_so(reference, tmp_path, capsys):
    from takd.train.run import run_stage

    cut = tmp_path / "s"
    _cut_after(reference, cut, 4)
    run_stage(_sft(cut, steps=8))
    assert _steps(cut) == list(range(1, 9))  # steps 1-4 kept, 5-8 trained once
    assert "resuming with max_steps: 6 -> 8" in capsys.readouterr().out


def test_a_done_stage_whose_final_is_gone_runs_again_and_a_moved_run_resumes_where_it_is(tmp_path, capsys):
    from takd.chain.plan import read_plan

    fast = str(REPO / "tests" / "data" / "fast_chain.yaml")
    run = tmp_path / "run"
    assert plan_main(["--chain", "tiny-m,tiny-s", "--submit", "--executor", "debug", "--run-dir", str(run),
                      "--profile", fast, "--no-eval", "--no-direct"]) == 0
    moved = tmp_path / "moved"
    run.rename(moved)
    shutil.rmtree(moved / "stages" / "init-tiny-s" / "final")
    capsys.readouterr()
    assert plan_main(["--resume", str(moved), "--executor", "debug"]) == 0
    out = capsys.readouterr().out
    assert "the run moved from" in out and "init-tiny-s: marked DONE but its final/ is gone: it runs again" in out
    _, stages = read_plan(moved)
    assert all(str(moved) in s.config.output_dir for s in stages)
    assert ckpt.is_complete(moved / "stages" / "init-tiny-s" / "final") and not run.exists()


@pytest.mark.parametrize("code,expected", [(errno.ENOSPC, "no space left on the device"),
                                           (errno.EROFS, "read-only file system")])
def test_a_full_or_read_only_disk_is_named(code, expected, tmp_path, capsys, monkeypatch):
    def fail(*args, **kwargs):
        raise OSError(code, os.strerror(code), str(tmp_path / "run" / "plan.yaml"))

    monkeypatch.setattr("takd.chain.cli.write_plan", fail)
    rc = plan_main(["--chain", TINY, "--submit", "--run-dir", str(tmp_path / "run"), "--executor", "debug"])
    line = _one_error(capsys)
    assert rc == 1 and expected in line and "plan.yaml" in line, line


def test_a_failed_local_stage_shows_its_cause(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TAKD_FAULT_STAGE", "init-tiny-s")
    fast = str(REPO / "tests" / "data" / "fast_chain.yaml")
    rc = plan_main(["--chain", "tiny-m,tiny-s", "--submit", "--executor", "local", "--run-dir", str(tmp_path / "r"),
                    "--profile", fast, "--no-eval", "--no-direct"])
    err = capsys.readouterr().err
    assert rc == 1 and "RuntimeError: stage init-tiny-s: failure injected by TAKD_FAULT_STAGE" in err, err


@pytest.mark.parametrize("judged_before", [0, 2])
def test_a_judge_that_never_answers_stops_at_the_deadline_saying_so(judged_before, capfd):
    """A listening socket that never replies: each try times out, retries are announced, and the deadline ends the
    wait (load only makes tries slower, so it ends sooner, never later than the retries allow). Items judged before
    are kept."""
    from takd.evaluate.judge import JudgeClient, JudgeDeadline, judge_ratio

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(64)  # connections are queued, never answered
    client = JudgeClient(f"http://127.0.0.1:{silent.getsockname()[1]}/v1", "judge", timeout_s=0.1, max_retries=1000,
                         backoff_s=0.01)
    answers = iter(["7 5"] * judged_before)

    def complete(prompt, give_up_at=None):
        return next(answers, None) or JudgeClient.complete(client, prompt, give_up_at)

    client.complete = complete
    items = [("q", "g", "a")] * 5
    try:
        if judged_before:
            res = judge_ratio(client, items, deadline_s=1.0)
            assert (res["items"], res["skipped"]) == (2, 3) and res["judge_ratio"] == pytest.approx(100 * 5 / 7)
        else:
            with pytest.raises(JudgeDeadline, match="no answer before the deadline"):
                judge_ratio(client, items, deadline_s=1.0)
    finally:
        silent.close()
    err = capfd.readouterr().err
    assert "retry 1/1000" in err and "retry 1000/1000" not in err


def test_status_reads_a_running_stage_live_and_names_a_stopped_one(reference, tmp_path, capsys):
    """A local stage in progress (its LOCK held by a live process) shows RUNNING with the newest logged step; the
    same stage without a writer shows STOPPED, never 'not started'."""
    from takd.chain.plan import build_plan, write_plan
    from takd.chain.profiles import default_profile, load_profile
    from takd.chain.status import main as status_main

    run = tmp_path / "run"
    stages = build_plan(["tiny-l", "tiny-s"], run_dir=run, profile=load_profile(default_profile(["tiny-l"])))
    write_plan(run, stages, {})
    d = run / "stages" / "sft-tiny-l"
    shutil.copy(reference / "metrics.jsonl", d / "metrics.jsonl")  # six logged steps
    (d / "LOCK").write_text(json.dumps({"host": socket.gethostname(), "pid": str(os.getpid()), "job": ""}))
    assert status_main([str(run)]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("sft-tiny-l "))
    assert row.split()[1] == "RUNNING" and " 6/" in row and "step 6" in row
    (d / "LOCK").write_text(json.dumps({"host": socket.gethostname(), "pid": "999999999", "job": ""}))  # gone
    status_main([str(run)])
    out = capsys.readouterr().out.splitlines()
    assert next(line for line in out if line.startswith("sft-tiny-l ")).split()[1] == "STOPPED"
    assert next(line for line in out if line.startswith("init-tiny-s ")).split()[1:3] == ["not", "started"]
