"""DeepSpeed engines on CPU with 2 processes (gloo, launched with torchrun): SFT, KD, SeqKD and MiniLLM under
ZeRO-1, 2 and 3 (ZeRO-3 also with a ZeRO-3 sharded teacher and with the optimizer offloaded) follow the
single-process loss trajectory of the same global batch, draw the same validation samples (so the same validation
Rouge-L) and, for SeqKD, the same teacher data; a collective checkpoint resumes the same trajectory; the
consolidated HF export loads and reproduces the engine's validation loss."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from takd import checkpoint as ckpt
from takd.config import merge
from takd.models.loading import load_model, load_tokenizer_for
from takd.train.checkpointing import rank_rng_file

REPO = Path(__file__).resolve().parent.parent
BASE = {
    "name": "ds", "method": "sft", "student": "tiny-s", "max_steps": 6, "save_every_steps": 3, "keep_checkpoints": 3,
    "log_every_steps": 1, "eval_every_steps": 6, "eval_prompts": 8, "select_by": "last", "max_new_tokens": 16,
    "max_prompt_tokens": 128, "tensorboard": False,
    # two parameter groups (vector-like parameters at their own rate): under ZeRO-3 the split reads `ds_shape`
    "optim": {"lr": 1e-3, "vector_lr": 3e-3, "warmup_steps": 2},
}
# per method: the single-process settings; 2 ranks run half the per-rank batch (same global batch)
METHODS = {
    "sft": {},
    "kd": {"method": "kd", "teacher": "tiny-m"},
    "seqkd": {"method": "seqkd", "teacher": "tiny-m"},  # on a 48-row data file (the teacher samples every row)
    # 16 rollouts per round, 2 PPO passes of 2 global micro-batches: steps 1-4 on round 1, 5-6 on round 2
    "minillm": {"method": "minillm", "teacher": "tiny-m", "batch_size": 8, "optim": {"lr": 2e-3},
                "minillm": {"num_rollouts": 16, "ppo_epochs": 2, "pt_chunk_tokens": 64}},
}
ZERO = {
    "1": {"zero_stage": 1},
    "2": {"zero_stage": 2},
    "3": {"zero_stage": 3},
    "3+offload": {"zero_stage": 3, "offload_optimizer": True},
    "3+teacher3": {"zero_stage": 3, "teacher_placement": "zero3"},
    # the teacher's logits kept across PPO passes (owner-first deal, the sharded teacher's forwards in lockstep)
    "3+teacher3+cache": {"zero_stage": 3, "teacher_placement": "zero3", "teacher_cache": True},
}
CASES = [("sft", "1"), ("sft", "2"), ("sft", "3+offload"), ("kd", "1"), ("kd", "2"), ("kd", "3"), ("seqkd", "2"),
         ("minillm", "1"), ("minillm", "2"), ("minillm", "3+teacher3"), ("minillm", "3+teacher3+cache")]
TOLERANCE = 1e-5  # float reassociation only: measured differences are below 1e-6 (fp32 on CPU)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _config(method: str, out: Path, procs: int, zero: str | None) -> dict:
    cfg = merge(BASE, METHODS[method])
    cfg.update(output_dir=str(out), micro_batch_size=8 // procs)
    if method == "seqkd":
        rows = out.parent / "rows48.jsonl"
        if not rows.is_file():
            from takd.data.rows import load_rows, write_jsonl

            write_jsonl(rows, load_rows("builtin", "valid")[:48])
        cfg["dataset"] = str(rows)
    if method == "minillm":
        cfg["minillm"]["rollout_batch_size"] = 16 // procs
    if zero is not None:
        engine = dict(ZERO[zero])
        if engine.pop("teacher_cache", False):
            cfg["minillm"]["teacher_cache"] = True
        cfg["deepspeed"] = {"enabled": True, **engine}
    return cfg


def _train(cfg: dict, procs: int) -> tuple[dict[int, dict], dict[int, dict], str]:
    out = Path(cfg["output_dir"])
    f = out.parent / f"{out.name}.yaml"
    f.write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if procs == 1:
        cmd = [sys.executable, "-m", "takd.train", "--config", str(f)]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={procs}",
               f"--master_port={_free_port()}", "-m", "takd.train", "--config", str(f)]
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if x.strip()]
    train = {r["step"]: r for r in rows if r["kind"] == "train"}
    return train, {r["step"]: r for r in rows if r["kind"] == "eval"}, done.stdout + done.stderr


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Each run once per module: single-process references and 2-rank runs, keyed by (method, zero or None)."""
    root = tmp_path_factory.mktemp("ds")
    cache: dict[tuple[str, str | None], tuple] = {}

    def get(method: str, zero: str | None):
        if (method, zero) not in cache:
            procs = 1 if zero is None else 2
            out = root / f"{method}-{zero or 'single'}"
            cache[method, zero] = (out, *_train(_config(method, out, procs, zero), procs))
        return cache[method, zero]

    return get


@pytest.mark.parametrize("method,zero", CASES)
def test_two_ranks_follow_the_single_process_trajectory(method, zero, runs):
    _, ref, ref_eval, _ = runs(method, None)
    out, got, evals, log = runs(method, zero)
    assert f"DeepSpeed ZeRO-{ZERO[zero]['zero_stage']}" in log and "on 2 process(es)" in log
    if zero.startswith("3+teacher3"):
        assert "(ZeRO-3 sharded)" in log
    if zero.endswith("+cache"):  # kept rows were reused: the round's last step ran the teacher on fewer rows
        assert got[4]["teacher_rows"] < 1.0
    assert sorted(got) == sorted(ref) == list(range(1, 7))
    for step in ref:
        assert got[step]["loss"] == pytest.approx(ref[step]["loss"], abs=TOLERANCE), (step, got[step])
    if method == "minillm":  # the same rollouts were drawn: same rewards and lengths, two rounds
        for step in (1, 5):
            for key in ("reward", "response_len"):
                assert got[step][key] == pytest.approx(ref[step][key], abs=TOLERANCE), (step, key)
        assert ref[1]["reward"] != ref[5]["reward"]
    assert evals[6]["val_loss"] == pytest.approx(ref_eval[6]["val_loss"], abs=TOLERANCE)
    # keyed per-prompt sampling: the same validation samples whatever the process count
    assert evals[6]["val_rouge_l"] == pytest.approx(ref_eval[6]["val_rouge_l"], abs=1e-6)
    if method == "seqkd":
        ref_dir = runs(method, None)[0]
        assert (out / "seqkd_data.jsonl").read_text() == (ref_dir / "seqkd_data.jsonl").read_text()

    # the consolidated export is a plain HF directory that reproduces the engine's validation loss
    final = out / "final"
    assert ckpt.is_complete(final)
    from takd.data.examples import encode_rows
    from takd.data.rows import load_rows
    from takd.train.validation import response_cross_entropy

    tok = load_tokenizer_for(str(final))
    ex = encode_rows(load_rows("builtin", "valid"), tok, 128, 16)[:8]
    loss = response_cross_entropy(load_model(str(final)), ex, tok.pad_token_id, 4)
    assert loss == pytest.approx(evals[6]["val_loss"], abs=1e-5)


@pytest.mark.parametrize("method,zero", [("sft", "2"), ("minillm", "3+teacher3")])
def test_collective_checkpoint_resume_continues_the_trajectory(method, zero, runs, tmp_path):
    """Kill after step 3 (later checkpoints and exports gone), re-run: steps 4-6 repeat the uninterrupted run.
    For MiniLLM step 3 is mid-round: the gathered rollout buffer and its pass position come back."""
    ref_dir, ref, _, _ = runs(method, zero)
    cut = tmp_path / "cut"
    shutil.copytree(ref_dir, cut)
    for name in ("final", "best", "checkpoints/step-000006"):
        shutil.rmtree(cut / name, ignore_errors=True)
    step3 = cut / "checkpoints" / "step-000003"
    assert (step3 / "ds" / "state").is_dir() and rank_rng_file(step3, 1).is_file()
    got, _, log = _train(_config(method, cut, 2, zero), 2)
    assert "resumed from" in log
    for step in (4, 5, 6):
        assert got[step]["loss"] == pytest.approx(ref[step]["loss"], abs=1e-5), step


def test_teacher_placement_zero3_needs_the_engine(tmp_path):
    from takd.config import ConfigError
    from takd.train.config import DeepSpeedConfig, stage_config
    from takd.train.supervised import KDTrainer

    cfg = stage_config("kd", teacher="tiny-m", output_dir=str(tmp_path),
                       deepspeed=DeepSpeedConfig(teacher_placement="zero3"))
    with pytest.raises(ConfigError, match="teacher_placement=zero3 needs the DeepSpeed path"):
        KDTrainer(cfg).setup()
    with pytest.raises(ConfigError, match="offload_optimizer needs deepspeed.zero_stage=3"):
        DeepSpeedConfig(zero_stage=2, offload_optimizer=True)


def test_zero3_ranks_that_finish_at_different_steps_keep_stepping_together(tmp_path):
    """Rank 0's rows end at step 1, rank 1's run to the limit: synced sampling and generation end without deadlock,
    and rank 0's rows stay ended (the extra steps it took part in are masked out)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={_free_port()}",
           str(REPO / "tests" / "sync_worker.py"), str(tmp_path)]
    done = subprocess.run(cmd, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0["lengths"] == [1, 1] and r1["lengths"] == [12, 12]
    assert r0["steps"] == r1["steps"] == 12  # rank 0 kept stepping (padding) until rank 1 was done
    assert (r0["texts"], r1["texts"]) == (1, 2)
