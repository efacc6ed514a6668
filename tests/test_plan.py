"""Chain planner and launcher: bad input fails before anything is written, the DAG is right, and chains run
through submitit's local executor and a real local Slurm (started by slurm/local/up.sh; see scripts/test.sh)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from takd.chain.cli import main as plan_main
from takd.chain.plan import read_plan
from takd.paths import DONE

FAST = str(Path(__file__).parent / "data" / "fast_chain.yaml")
TINY = "tiny-l,tiny-m,tiny-s"


def _run(argv, capsys):
    rc = plan_main(argv)
    out = capsys.readouterr()
    return rc, out.out, out.err


# ----------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(("argv", "expected"), [
    (["--chain", "tiny-l,tiny-xl"], "unknown model 'tiny-xl'"),
    (["--chain", "tiny-l"], "needs at least a teacher and a student"),
    (["--chain", "tiny-s,tiny-l"], "tiny-l (2M params) is not smaller than its teacher tiny-s"),
    (["--chain", "opt-125m,tiny-s"], "opt-125m has a vocabulary of 50272 tokens, tiny-s 1024"),
    (["--chain", "tiny-l,tiny-m,tiny-l"], "model 'tiny-l' appears twice"),
    (["--chain", TINY, "--cluster", "narval"], "cluster narval needs a Slurm account"),
    (["--chain", TINY, "--cluster", "mars"], "unknown cluster 'mars'"),
    (["--chain", TINY, "--baselines", "dpo"], "unknown baseline 'dpo'"),
    (["--chain", TINY, "--set", "optim.lr=-1"], "optim.lr must be > 0"),
    (["--chain", TINY, "--set", "minillm.val_rev_kl_prompts=0"], "minillm.val_rev_kl_prompts must be >= 1"),
    (["--chain", TINY, "--set", "eval_at_start=maybe"], "eval_at_start: expected bool"),
    (["--chain", TINY, "--set", "optim.vector_lr=0"], "optim.vector_lr must be > 0 (or null"),
    (["--chain", "opt-13b,opt-1.3b"], "on a login node run: python -m takd.prepare --models opt-13b,opt-1.3b"),
])
def test_bad_input_is_one_line_and_nothing_is_written(argv, expected, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("SLURM_ACCOUNT", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.config/takd.yaml
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    run_dir = tmp_path / "run"
    rc, _, err = _run(argv + ["--submit", "--run-dir", str(run_dir), "--executor", "debug"], capsys)
    lines = [x for x in err.strip().splitlines() if x.startswith("error:")]
    assert rc == 2 and len(lines) == 1 and expected in lines[0], err
    assert not run_dir.exists()


def test_a_profile_with_an_unknown_baseline_is_one_line_naming_it(tmp_path, capsys):
    profile = tmp_path / "chain.yaml"
    profile.write_text("dataset: builtin\nbaselines: [kd, dpo]\n")
    run_dir = tmp_path / "run"
    rc, _, err = _run(["--chain", TINY, "--profile", str(profile), "--submit", "--run-dir", str(run_dir),
                       "--executor", "debug"], capsys)
    lines = [x for x in err.strip().splitlines() if x.startswith("error:")]
    assert rc == 2 and lines == [f"error: {profile}: baselines: unknown baseline 'dpo'; expected sft, kd, seqkd"]
    assert not run_dir.exists()


def test_existing_run_dir_needs_resume(tmp_path, capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "plan.yaml").write_text("chain: []\nstages: []\n")
    rc, _, err = _run(["--chain", TINY, "--submit", "--run-dir", str(run_dir), "--executor", "debug"], capsys)
    assert rc == 2 and f"use --resume {run_dir}" in err


# ----------------------------------------------------------------------------------------- the DAG
def test_dry_run_prints_the_plan_and_writes_nothing(tmp_path, capsys):
    rc, out, _ = _run(["--chain", TINY, "--run-dir", str(tmp_path / "r")], capsys)
    assert rc == 0 and "minillm-tiny-l-to-tiny-m" in out and "Nothing written" in out
    assert not (tmp_path / "r").exists()


def test_dag_hands_each_stage_its_predecessors_final_checkpoint(tmp_path, capsys, monkeypatch):
    run = tmp_path / "r"
    monkeypatch.setattr("takd.chain.launch.launch", lambda *a, **k: 0)  # plan and write the run directory only
    rc, _, _ = _run(["--chain", TINY, "--submit", "--run-dir", str(run), "--profile", FAST, "--baselines", "sft,kd"],
                    capsys)
    assert rc == 0
    _, stages = read_plan(run)
    by = {s.name: s for s in stages}
    fin = lambda n: str(run / "stages" / n / "final")  # noqa: E731
    assert by["minillm-tiny-l-to-tiny-m"].config.teacher == fin("sft-tiny-l")
    assert by["minillm-tiny-l-to-tiny-m"].config.student == fin("init-tiny-m")
    assert by["minillm-tiny-m-to-tiny-s"].config.teacher == fin("minillm-tiny-l-to-tiny-m")
    assert by["minillm-tiny-m-to-tiny-s"].depends_on == ["minillm-tiny-l-to-tiny-m", "init-tiny-s"]
    assert by["minillm-tiny-l-to-tiny-s"].label == "direct" and by["minillm-tiny-m-to-tiny-s"].label == "via-ta"
    assert by["baseline-kd-tiny-s"].config.student == "tiny-s"  # baselines start from the base model
    assert by["baseline-kd-tiny-s"].config.teacher == fin("sft-tiny-l")
    evals = {s.name for s in stages if s.kind == "eval"}
    assert "eval-init-tiny-m" not in evals
    assert {"eval-sft-tiny-l", "eval-init-tiny-s", "eval-minillm-tiny-m-to-tiny-s", "eval-minillm-tiny-l-to-tiny-s",
            "eval-baseline-sft-tiny-s", "eval-baseline-kd-tiny-s"} <= evals
    init_eval = by["eval-init-tiny-s"]  # the student's init is measured against the chain's teacher
    assert init_eval.config.teacher == fin("sft-tiny-l") and init_eval.depends_on == ["init-tiny-s", "sft-tiny-l"]
    names = [s.name for s in stages]
    for s in stages:  # topological order
        assert all(names.index(d) < names.index(s.name) for d in s.depends_on)
    assert yaml.safe_load((run / "plan.yaml").read_text())["git"]


def test_no_direct_no_eval_and_ta_sweep(tmp_path, capsys):
    rc, out, _ = _run(["--chain", TINY, "--no-direct"], capsys)
    assert rc == 0 and "minillm-tiny-l-to-tiny-s" not in out
    rc, out, _ = _run(["--chain", TINY, "--no-eval"], capsys)
    assert rc == 0 and "eval-" not in out and "minillm-tiny-l-to-tiny-s" in out
    rc, out, _ = _run(["--chain", "tiny-l,tiny-s", "--ta", "tiny-m|tiny-m"], capsys)
    assert rc == 0 and out.count("\nsft-tiny-l ") == 1 and "minillm-tiny-m-to-tiny-s" in out


def test_narval_sbatch_for_stage_one_of_the_opt_chain(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    rc, out, err = _run(["--chain", "opt-13b,opt-6.7b,opt-1.3b", "--cluster", "narval", "--account", "def-lab",
                         "--show-sbatch", "sft-opt-13b"], capsys)
    assert rc == 0, err
    for line in ["#SBATCH --gpus-per-node=a100:4", "#SBATCH --account=def-lab", "#SBATCH --ntasks-per-node=4",
                 "#SBATCH --nodes=4", "#SBATCH --time=928", "#SBATCH --signal=USR2@120", "export HF_HUB_OFFLINE=1",
                 "export TRANSFORMERS_OFFLINE=1", "module load StdEnv/2023"]:
        assert line in out, line
    assert "warning: not in the local cache" in err  # a dry run warns; --submit refuses
    # 4 nodes: under ZeRO-3 on 2 nodes, 12.85B x 18/8 B + 1.03 GB of gathered embedding + 7.27 GB of working memory
    # = 37.2 GB > 0.9 x 40. The time asked is the estimate with its margin: ~12.2 h x 1.25 + 0.25 h = 928 min
    # (takd/chain/timing.py), most of it validation decoding of the sharded model; the role's flat 12 h would have
    # been killed


# ----------------------------------------------------------------------------------------- running
def test_local_executor_runs_the_whole_chain_and_resume_skips_done(fast_chain_run, capsys):
    run, rc, out = fast_chain_run
    assert rc == 0, out
    _, stages = read_plan(run)
    assert all((run / "stages" / s.name / DONE).is_file() for s in stages)
    assert "student via TA" in out and (run / "results.csv").is_file()
    assert f"report: {run / 'report' / 'report.md'}" in out and (run / "report" / "rouge_l.png").is_file()
    stamp = (run / "stages" / "sft-tiny-l" / DONE).stat().st_mtime
    rc, out, _ = _run(["--resume", str(run), "--executor", "local"], capsys)
    assert rc == 0 and f"{len(stages)} stage(s) already DONE" in out
    assert (run / "stages" / "sft-tiny-l" / DONE).stat().st_mtime == stamp


def _sacct_states(job_ids, timeout_s=60):
    """Final Slurm states; waits while a job is still in its epilogue (result written, state not yet final)."""
    import time

    deadline = time.time() + timeout_s
    while True:
        out = subprocess.run(["sacct", "--parsable2", "-o", "JobID,State", "-j", ",".join(job_ids)],
                             capture_output=True, text=True, check=True).stdout
        states = {line.split("|")[0]: line.split("|")[1] for line in out.splitlines()[1:] if "|" in line}
        if time.time() > deadline or not {"RUNNING", "COMPLETING", "PENDING"} & set(states.values()):
            return states
        time.sleep(1)


@pytest.mark.slurm
def test_slurm_chain_failure_cancels_dependants_then_resume_completes(tmp_path, capsys, monkeypatch):
    run = tmp_path / "r"
    monkeypatch.setenv("TAKD_FAULT_STAGE", "minillm-tiny-l-to-tiny-m")
    argv = ["--chain", TINY, "--submit", "--executor", "slurm", "--cluster", "local", "--run-dir", str(run),
            "--profile", FAST, "--wait", "--no-eval"]
    rc, out, err = _run(argv, capsys)
    assert rc == 1
    jobs = yaml.safe_load((run / "jobs.yaml").read_text())
    states = _sacct_states([str(j) for j in jobs.values()])
    assert states[str(jobs["minillm-tiny-l-to-tiny-m"])] == "FAILED"
    assert states[str(jobs["minillm-tiny-m-to-tiny-s"])] == "CANCELLED"  # afterok never satisfied
    assert states[str(jobs["sft-tiny-l"])] == "COMPLETED" and (run / "stages" / "sft-tiny-l" / DONE).is_file()
    assert not (run / "stages" / "minillm-tiny-m-to-tiny-s" / DONE).exists()
    first_jobs = dict(jobs)

    monkeypatch.delenv("TAKD_FAULT_STAGE")
    rc, out, err = _run(["--resume", str(run), "--executor", "slurm", "--wait"], capsys)
    assert rc == 0, err
    jobs = yaml.safe_load((run / "jobs.yaml").read_text())
    assert jobs["sft-tiny-l"] == first_jobs["sft-tiny-l"]  # finished stages were not re-run
    assert jobs["minillm-tiny-m-to-tiny-s"] != first_jobs["minillm-tiny-m-to-tiny-s"]
    states = _sacct_states([str(j) for j in jobs.values()])
    _, stages = read_plan(run)
    for st in stages:
        assert (run / "stages" / st.name / DONE).is_file()
        assert states[str(jobs[st.name])] == "COMPLETED", st.name
    via = yaml.safe_load((run / "stages" / "minillm-tiny-m-to-tiny-s" / "stage.yaml").read_text())
    assert via["teacher"] == str(run / "stages" / "minillm-tiny-l-to-tiny-m" / "final")
    assert not any(s.kind == "eval" for s in stages)


@pytest.mark.slurm
def test_a_warning_signal_mid_run_saves_requeues_and_loses_no_step(tmp_path):
    """Slurm's warning signal (USR2, what --signal=USR2@120 sends before the time limit) reaches a running stage: it
    finishes its optimizer step, saves, and submitit requeues it; the rerun resumes there. Sized by events: the
    signal goes out once the stage has logged 20 steps, whatever the machine's speed."""
    import json
    import time

    import submitit

    from takd.chain.launch import StageJob
    from takd.chain.plan import build_plan, write_plan
    from takd.chain.profiles import ChainProfile

    run = tmp_path / "r"
    profile = ChainProfile(dataset="builtin", common={"max_new_tokens": 16, "max_prompt_tokens": 128,
                                                      "tensorboard": False, "eval_prompts": 4})
    stages = build_plan(["tiny-m", "tiny-s"], run_dir=run, profile=profile, evaluate=False,
                        overrides=["max_steps=300", "save_every_steps=100000", "eval_every_steps=0",
                                   "log_every_steps=1", "select_by=last", "micro_batch_size=16", "batch_size=16"])
    write_plan(run, stages, {"chain": ["tiny-m", "tiny-s"], "cluster": "local"})
    stage = run / "stages" / "sft-tiny-m"
    ex = submitit.SlurmExecutor(folder=str(run / "slurm" / "%j"), max_num_timeout=10)
    ex.update_parameters(time=30, cpus_per_task=1, ntasks_per_node=1)
    job = ex.submit(StageJob(str(stage), "train"))
    deadline = time.time() + 900  # a hang guard only
    while not (stage / "metrics.jsonl").is_file() or len((stage / "metrics.jsonl").read_text().splitlines()) < 20:
        assert time.time() < deadline and not job.done(), "the stage never logged 20 steps"
        time.sleep(0.2)
    subprocess.run(["scancel", "--signal=USR2", str(job.job_id)], check=True)
    job.result()  # raises if it never finished
    log = Path(job.paths.stdout).read_text()
    saved = int(log.split("saved at optimizer step ")[1].split()[0])
    assert 20 <= saved < 300 and f"resumed from {stage / 'checkpoints' / f'step-{saved:06d}'}" in log, log[-3000:]
    rows = [json.loads(x) for x in (stage / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["kind"] == "train"] == list(range(1, 301))  # none twice, none missing
    assert (stage / DONE).is_file()


def test_multi_gpu_stages_get_the_estimated_zero_stage_and_teacher_placement(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    from takd.chain.allocate import assign_resources
    from takd.chain.plan import build_plan
    from takd.chain.profiles import ChainProfile, load_cluster
    from takd.config import to_dict

    stages = build_plan(["opt-13b", "opt-6.7b", "opt-1.3b"], run_dir=tmp_path, profile=ChainProfile())
    assign_resources(stages, load_cluster("rorqual"))
    by = {s.name: s for s in stages}
    sft = by["sft-opt-13b"]  # 12.85B x 18 B/param sharded over 4 H100s: 57.84 GB, + 4 B x its 257M-parameter
    # embedding gathered whole (1.03 GB), + working memory (below)
    assert (sft.nodes, sft.gpus_per_node, sft.config.deepspeed.zero_stage) == (1, 4, 3)
    # working: 2 GB overhead + activations with checkpointing (2·512·8·5120·40 + 34·512·8·5120 B = 2.39 GB) + the
    # student's logits (8·512·50272·14 B = 2.88 GB) = 7.27 GB
    assert sft.checkpointing and sft.working_gb == pytest.approx(7.27, abs=0.01)
    assert sft.mem_per_gpu_gb == pytest.approx(66.14, abs=0.01)
    # gathering the student whole for generation would add 25.7 GB: it does not fit, so it is switched off
    assert to_dict(sft.config.deepspeed) == {"enabled": True, "zero_stage": 3, "offload_optimizer": False,
                                             "teacher_placement": "replicated", "gather_for_generation": False}
    # MiniLLM's rollout KV caches (16 prompts x 512 tokens) outweigh its training step: student 2·32·16·512·4096·2 B
    # = 4.29 GB + teacher 2·40·16·512·5120·2 B = 6.71 GB, + 2 GB = 13.01 GB. ZeRO-2 with a replicated teacher would
    # need 6.66B x 6.5 B = 43.28 + 25.71 + 13.01 = 82.0 GB > 0.9 x 80: ZeRO-3 (6.66B x 4.5 B + 4 B x 206M embedding
    # = 30.79 GB of states) with a replicated teacher fits: 69.50 GB
    first = by["minillm-opt-13b-to-opt-6.7b"]
    assert (first.nodes, first.gpus_per_node, first.config.deepspeed.zero_stage,
            first.config.deepspeed.teacher_placement) == (1, 4, 3, "replicated")
    assert first.working_gb == pytest.approx(13.01, abs=0.01) and first.mem_per_gpu_gb == pytest.approx(69.50, abs=0.01)
    assert by["init-opt-1.3b"].gpus_per_node == 1 and by["init-opt-1.3b"].config.deepspeed.enabled is False

    narval = build_plan(["opt-13b", "opt-6.7b", "opt-1.3b"], run_dir=tmp_path, profile=ChainProfile())
    assign_resources(narval, load_cluster("narval"))
    first = {s.name: s for s in narval}["minillm-opt-13b-to-opt-6.7b"]
    # memory alone: both models sharded over 8 A100s (6.66B x 18/8 + 0.82 + 12.85B x 2/8 + 2 B x 257M + 13.01 =
    # 32.54 GB); but decoding then all-gathers both models across 2 nodes at every token: ~349 h, more than two
    # 168 h jobs. 16 GPUs halve the prompts per GPU (~209 h, two jobs); gathering the student whole for generation
    # would need 6.66B x (18/16 + 2) + 0.82 + 1.61 + 0.51 + 13.01 = 36.77 GB > 0.9 x 40: not done
    assert (first.nodes, first.gpus_per_node, first.config.deepspeed.zero_stage,
            first.config.deepspeed.teacher_placement) == (4, 4, 3, "zero3")
    assert first.config.deepspeed.gather_for_generation is False
    # + the teacher's logits kept across the PPO passes: 256/16 rollouts x 512 tokens x 50272 x 2 B = 0.82 GB
    assert first.config.minillm.teacher_cache is True
    assert first.mem_per_gpu_gb == pytest.approx(23.44 + 0.82, abs=0.01)
    assert first.jobs == 2 and 168 < first.est_hours < 2 * 168
    assert any("16 GPUs instead of the 8 that fit its memory" in n for n in first.notes)

    pinned = build_plan(["opt-13b", "opt-6.7b", "opt-1.3b"], run_dir=tmp_path, profile=ChainProfile())
    assign_resources(pinned, load_cluster("rorqual"), pinned=("deepspeed.zero_stage",))
    assert {s.name: s for s in pinned}["sft-opt-13b"].config.deepspeed.zero_stage == 1  # the user's value


@pytest.mark.parametrize("params_m,layer_m", [(6658, 205.9), (12853, 257.4), (125, 38.6)])
@pytest.mark.parametrize("gpus,nodes", [(1, 1), (4, 1), (4, 2), (8, 4)])
def test_model_states_equal_deepspeeds_own_estimators(params_m, layer_m, gpus, nodes):
    """ZeRO-2, ZeRO-3 and ZeRO-3 with the optimizer offloaded: per GPU, the bytes DeepSpeed's estimators print;
    ZeRO-1 (no DeepSpeed estimator): ZeRO-2 with the half-precision gradients whole on every GPU."""
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

    from takd.chain.resources import GB, model_states_gb

    p, layer, n = int(params_m * 1e6), int(layer_m * 1e6), gpus * nodes
    zero2 = estimate_zero2_model_states_mem_needs(p, gpus, nodes, cpu_offload=False)[1]
    zero3 = estimate_zero3_model_states_mem_needs(p, layer, gpus, nodes, cpu_offload=False)[1]
    zero3_off = estimate_zero3_model_states_mem_needs(p, layer, gpus, nodes, cpu_offload=True,
                                                      cpu_offload_params=False)[1]
    ours = {(z, off): model_states_gb(p / 1e6, layer / 1e6, z, n, off) * GB for z in (1, 2, 3) for off in (False, True)}
    assert ours[2, False] == pytest.approx(zero2, abs=1)
    assert ours[3, False] == pytest.approx(zero3, abs=1)
    assert ours[3, True] == pytest.approx(zero3_off, abs=1)
    assert ours[1, False] == pytest.approx(zero2 + 2 * p * (1 - 1 / n), abs=1)


def test_an_offloaded_optimizer_is_estimated_as_such_and_only_under_zero3(tmp_path):
    from takd.chain.allocate import assign_resources
    from takd.chain.plan import build_plan
    from takd.chain.profiles import ChainProfile, load_cluster
    from takd.chain.resources import GB, largest_layer_m
    from takd.models.registry import resolve

    stages = build_plan(["opt-13b", "opt-6.7b"], run_dir=tmp_path, profile=ChainProfile(),
                        overrides=["deepspeed.offload_optimizer=true", "deepspeed.zero_stage=3"])
    assign_resources(stages, load_cluster("narval"))
    first = {s.name: s for s in stages}["minillm-opt-13b-to-opt-6.7b"]
    ds, n = first.config.deepspeed, first.nodes * first.gpus_per_node
    assert ds.zero_stage == 3 and ds.offload_optimizer and ds.enabled
    student, teacher = resolve("opt-6.7b"), resolve("opt-13b")
    states = student.params_m * 1e6 * ((2 / n) + (2 if ds.gather_for_generation else 0)) \
        + 4 * largest_layer_m(student) * 1e6
    teacher_gb = teacher.params_m * 1e6 * (2 if ds.teacher_placement == "replicated" else 2 / n) \
        + (0 if ds.teacher_placement == "replicated" else 2 * largest_layer_m(teacher) * 1e6)
    assert first.mem_per_gpu_gb == pytest.approx((states + teacher_gb) / GB + first.working_gb, abs=1e-6)


@pytest.mark.slurm
def test_two_task_slurm_stages_train_with_deepspeed_zero3(tmp_path, capsys):
    """The 2-rank DeepSpeed path launched as 2-task Slurm jobs through the planner (gloo on CPU), under ZeRO-3 with
    the teacher sharded too and the student not gathered for generation: SFT, init and MiniLLM stages all run with
    every forward a collective (the synchronised per-layer path)."""
    run = tmp_path / "r"
    rc, out, err = _run(["--chain", "tiny-m,tiny-s", "--submit", "--executor", "slurm", "--cluster", "local-ddp",
                         "--run-dir", str(run), "--profile", FAST, "--wait", "--no-eval",
                         "--set", "deepspeed.zero_stage=3", "--set", "deepspeed.teacher_placement=zero3",
                         "--set", "deepspeed.gather_for_generation=false"], capsys)
    assert rc == 0, err
    jobs = yaml.safe_load((run / "jobs.yaml").read_text())
    states = _sacct_states([str(j) for j in jobs.values()])
    assert set(states[str(j)] for j in jobs.values()) == {"COMPLETED"}
    script = next((run / "stages" / "sft-tiny-m" / "slurm").glob("*/*_submission.sh")).read_text()
    assert "#SBATCH --ntasks-per-node=2" in script
    log = next((run / "stages" / "sft-tiny-m" / "slurm").glob("*/*_0_log.out")).read_text()
    assert "DeepSpeed ZeRO-3 on 2 process(es)" in log
    distill = "minillm-tiny-m-to-tiny-s"
    log = next((run / "stages" / distill / "slurm").glob("*/*_0_log.out")).read_text()
    assert "DeepSpeed ZeRO-3 on 2 process(es), teacher" in log and "(ZeRO-3 sharded)" in log
    for stage in ("sft-tiny-m", "init-tiny-s", distill):
        assert (run / "stages" / stage / DONE).is_file()
        assert ckpt_complete(run / "stages" / stage / "final")
    # the hand-off is a consolidated HF model: it loads outside DeepSpeed
    from takd.models.loading import load_model

    assert sum(p.numel() for p in load_model(str(run / "stages" / distill / "final")).parameters()) > 100_000


def ckpt_complete(path: Path) -> bool:
    from takd.checkpoint import is_complete

    return is_complete(path)


def test_a_profiles_deepspeed_keys_are_kept_when_they_fit_and_replaced_with_a_note_when_not(tmp_path):
    """Chain profile < the estimate's stated need < --set: the plan says which won."""
    from takd.chain.allocate import assign_resources
    from takd.chain.plan import build_plan, plan_table
    from takd.chain.profiles import ChainProfile, load_cluster

    def first_stage(profile, cluster, overrides=()):
        stages = build_plan(["opt-13b", "opt-6.7b"], run_dir=tmp_path, profile=profile, overrides=list(overrides),
                            evaluate=False)
        assign_resources(stages, load_cluster(cluster))
        return {s.name: s for s in stages}["minillm-opt-13b-to-opt-6.7b"], plan_table(stages)

    # rorqual's estimate alone picks ZeRO-2 (see above); a profile asking for ZeRO-3 fits too, so it is kept
    st, table = first_stage(ChainProfile(distill={"deepspeed": {"zero_stage": 3}}), "rorqual")
    assert st.config.deepspeed.zero_stage == 3 and st.pinned == {"deepspeed.zero_stage": "profile"}
    assert "the profile's deepspeed" not in table
    # ZeRO-1 with a replicated teacher never fits 40 GB A100s: the estimate's choice replaces it, and says so
    profile = ChainProfile(distill={"deepspeed": {"zero_stage": 1, "teacher_placement": "replicated"}})
    st, table = first_stage(profile, "narval")
    assert (st.config.deepspeed.zero_stage, st.config.deepspeed.teacher_placement) == (3, "zero3")
    assert "note: minillm-opt-13b-to-opt-6.7b: the profile's deepspeed zero_stage=1, teacher_placement=replicated " \
           "does not fit 4x40GB nodes; the estimate's choice is used" in table
    # --set wins over both, even where the estimate says it does not fit
    st, table = first_stage(profile, "narval", ["deepspeed.zero_stage=1"])
    assert st.config.deepspeed.zero_stage == 1 and "kept, although the estimate says it does not fit" in table


def test_a_set_key_no_stage_has_is_an_error(capsys):
    rc, _, err = _run(["--chain", TINY, "--method", "kd", "--set", "minillm.gamma=1"], capsys)
    assert rc == 2 and "--set minillm.gamma=1: no stage of this plan has that key" in err
    rc, out, _ = _run(["--chain", TINY, "--set", "minillm.gamma=1", "--no-eval"], capsys)  # sft stages lack it
    assert rc == 0 and "minillm-tiny-l-to-tiny-m" in out


def test_the_time_estimate_hand_case():
    """6·N·tokens at 35 % of peak, plus decoding at 60 % of HBM bandwidth (takd/chain/timing.py)."""
    from takd.chain.timing import Hardware, Placement, decode_seconds_per_token, stage_hours
    from takd.train.config import stage_config

    hw = Hardware(peak_tflops=100, hbm_tb_s=2.0, nvlink_gb_s=400, internode_gb_s=25, gpus_per_node=4)
    cfg = stage_config("sft", max_steps=100, batch_size=32, micro_batch_size=8, max_prompt_tokens=256,
                       max_new_tokens=256, eval_every_steps=0, eval_prompts=16)
    hours = stage_hours(cfg, 1e9, 0.0, hw, Placement(1, 1), checkpointing=False, n_examples=1000)
    train = 6 * 1e9 * 32 * 512 * 100 / (100e12 * 0.35)  # 280.9 s
    decode = 256 * 2e9 / (2e12 * 0.6)  # one validation call of 16 prompts, 256 tokens
    assert hours["train"] == pytest.approx(train / 3600) and hours["validation"] == pytest.approx(decode / 3600)
    # a ZeRO-3 model not gathered, 8 GPUs on 2 nodes: every token also all-gathers 7/8 of its weights over the
    # node's 25 GB/s shared by 4 GPUs
    assert decode_seconds_per_token(1e9, hw, Placement(2, 4), sharded=True) == pytest.approx(
        2e9 / 1.2e12 + 2e9 * 7 / 8 / 6.25e9)


def test_train_seeds_replicate_the_distillation_stages_from_one_teacher_and_init(tmp_path, capsys):
    from takd.chain import cli

    args = cli.parser().parse_args(["--chain", "tiny-l,tiny-m,tiny-s", "--train-seeds", "1,2", "--baselines", "kd",
                                    "--run-dir", str(tmp_path / "r")])
    _, stages, _ = cli.prepare_run(args)
    by = {s.name: s for s in stages}
    assert {"sft-tiny-l", "init-tiny-m", "init-tiny-s"} <= set(by) and "sft-tiny-l-seed1" not in by
    for k in (1, 2):
        via = by[f"minillm-tiny-m-to-tiny-s-seed{k}"]
        assert via.config.seed == k and via.depends_on == [f"minillm-tiny-l-to-tiny-m-seed{k}", "init-tiny-s"]
        assert by[f"minillm-tiny-l-to-tiny-s-seed{k}"].config.seed == k
        assert by[f"baseline-kd-tiny-s-seed{k}"].config.seed == k
        assert by[f"eval-minillm-tiny-l-to-tiny-s-seed{k}"].config.meta["train_seed"] == str(k)
    assert "train_seed" not in by["eval-init-tiny-s"].config.meta
    for bad in ("1,1", "a,2", "-1"):
        with pytest.raises(cli.ConfigError, match="--train-seeds"):
            cli.prepare_run(cli.parser().parse_args(["--chain", "tiny-l,tiny-s", f"--train-seeds={bad}"]))


def test_local_stages_run_concurrently_as_their_dependencies_allow(tmp_path, monkeypatch):
    """The local launcher's scheduling: never more than `workers` at once, a stage only after its dependencies, and
    after a failure nothing new starts while the running ones finish."""
    from types import SimpleNamespace

    from takd.chain import launch

    events: list[tuple[str, str]] = []
    running: set[str] = set()
    peak = [0]

    class Job:
        def __init__(self, name: str, fail: bool):
            self.name, self.fail, self.polls = name, fail, 0
            self.paths = SimpleNamespace(stdout=str(tmp_path / "no-log"))

        def done(self) -> bool:
            self.polls += 1
            finished = self.polls > {"a": 1, "b": 3}.get(self.name, 2)
            if finished:
                running.discard(self.name)
            return finished

        def result(self):
            events.append(("end", self.name))
            if self.fail:
                raise RuntimeError("boom")

    def start(run_dir, st, kind, threads):
        running.add(st.name)
        peak[0] = max(peak[0], len(running))
        events.append(("start", st.name))
        return Job(st.name, st.name == "fail")

    monkeypatch.setattr(launch, "_start", start)
    monkeypatch.setattr(launch, "_build_shared_inputs", lambda todo: None)
    monkeypatch.setattr(launch, "_summarise", lambda run_dir: None)
    monkeypatch.setattr(launch.time, "sleep", lambda s: None)
    stage = lambda name, *deps: SimpleNamespace(name=name, depends_on=list(deps))  # noqa: E731
    dag = [stage("a"), stage("b"), stage("c", "a", "b"), stage("d"), stage("e", "c")]
    assert launch._run_locally(tmp_path, dag, "local", workers=2) == 0
    order = [n for kind, n in events if kind == "start"]
    ends = [n for kind, n in events if kind == "end"]
    assert peak[0] == 2 and sorted(order) == list("abcde")
    assert order.index("c") > max(order.index("a"), order.index("b")) and ends.index("c") < order.index("e")
    assert ends.index("a") < ends.index("b") and order.index("d") < order.index("c")  # d fills a's freed slot
    events.clear()
    assert launch._run_locally(tmp_path, [stage("fail"), stage("x"), stage("y", "fail"), stage("z")], "local",
                               workers=2) == 1
    started = [n for kind, n in events if kind == "start"]
    assert "y" not in started and set(started) <= {"fail", "x", "z"}
