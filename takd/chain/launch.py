"""Launch planned stages through submitit: Slurm (afterok chain), local subprocesses in order, or in-process.

A stage job is `StageJob(stage_dir)`: it refuses to start unless every input checkpoint is complete, runs the
training stage (or the evaluation), and writes `DONE` only after the final HF directory is complete and loads.
On Slurm's timeout signal submitit calls `checkpoint()`, which requeues the same job; the trainer then resumes
from the newest complete checkpoint by itself.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import submitit
import yaml

from takd import checkpoint as ckpt
from takd.chain.plan import PlannedStage, load_stage_config, stage_models
from takd.chain.prepare import job_environment
from takd.chain.profiles import ClusterProfile, load_cluster
from takd.config import ConfigError
from takd.paths import DONE, stage_dir


def is_done(d: Path, kind: str) -> bool:
    """DONE, with its output still there: a DONE stage whose `final/` (or results.csv) is gone is run again."""
    if not (d / DONE).is_file():
        return False
    if ckpt.is_complete(d / "final") if kind == "train" else (d / "results.csv").is_file():
        return True
    (d / DONE).unlink(missing_ok=True)
    print(f"{d.name}: marked DONE but its {'final/' if kind == 'train' else 'results.csv'} is gone: it runs again",
          flush=True)
    return False


class StageJob(submitit.helpers.Checkpointable):
    """One stage, run wherever submitit puts it. Re-running it is always safe (resume or no-op)."""

    def __init__(self, stage_dir: str, kind: str = "train"):
        self.stage_dir, self.kind = str(stage_dir), kind

    def __call__(self) -> str:
        d = Path(self.stage_dir)
        if is_done(d, self.kind):
            return str(d)
        for key, value in job_environment().items():
            os.environ.setdefault(key, value)
        config = load_stage_config(d / "stage.yaml", self.kind)
        if os.environ.get("TAKD_FAULT_STAGE") == d.name:  # fault injection for launcher tests and drills
            raise RuntimeError(f"stage {d.name}: failure injected by TAKD_FAULT_STAGE")
        from takd import dist

        dist.export_slurm_task_env()
        if self.kind == "eval" and not dist.is_main():
            return "evaluation runs on rank 0"
        out = self._train(config) if self.kind == "train" else self._evaluate(config)
        (d / DONE).write_text(f"{out}\n")
        return str(out)

    @staticmethod
    def _check_inputs(paths: list[str]) -> None:
        for p in paths:
            if p and Path(p).name == "final" and not ckpt.is_complete(p):
                raise RuntimeError(f"input checkpoint {p} is missing or incomplete: its stage has not finished "
                                   "(a stage never starts from a partial checkpoint)")

    def _train(self, cfg) -> Path:
        from takd.train.preemption import Preempted, PreemptionGuard
        from takd.train.run import run_stage

        self._check_inputs([cfg.student, cfg.teacher or ""])
        from takd.chain.staging import maybe_stage

        cfg = maybe_stage(cfg)
        with PreemptionGuard() as guard:  # installed over submitit's handlers, which it keeps for the hand-over
            try:
                return run_stage(cfg, guard)
            except Preempted as err:
                saved = err
        # The checkpoint is complete on every rank: now submitit's own handler requeues the job (rank 0) and exits.
        handler = guard.handler_before(saved.signum)
        from takd import dist

        if handler is not None:
            handler(saved.signum, None)
        if not dist.is_main():
            time.sleep(600)  # the requeue ends this task with the job; never report a result of our own
        raise saved

    def _evaluate(self, job) -> Path:
        from takd.evaluate.run import run_evaluation, write_results
        from takd.models.loading import quiet_transformers

        quiet_transformers()
        self._check_inputs([job.model])
        return write_results(run_evaluation(job), Path(job.output_dir))


# ------------------------------------------------------------------------------------------- executors
def slurm_parameters(st: PlannedStage, cluster: ClusterProfile, account: str | None) -> dict:
    p: dict = {"job_name": f"takd-{st.name}", "time": st.time_min, "nodes": st.nodes, "signal_delay_s": 120,
               "stderr_to_stdout": True}
    if cluster.gpus_per_node and st.gpus_per_node:
        p["ntasks_per_node"] = st.gpus_per_node  # one process per GPU
        p["gpus_per_node"] = f"{cluster.gpu_type}:{st.gpus_per_node}"  # Alliance typed-GPU syntax
        p["cpus_per_task"] = cluster.cpus_per_gpu
        if cluster.mem_gb_per_gpu:
            p["mem"] = f"{int(cluster.mem_gb_per_gpu * st.gpus_per_node)}G"
    else:
        p["ntasks_per_node"] = cluster.cpu_tasks_per_node if st.kind == "train" else 1
        p["cpus_per_task"] = cluster.cpus_per_task or 1
        if cluster.mem_gb:
            p["mem"] = f"{int(cluster.mem_gb)}G"
    if account:
        p["account"] = account
    if cluster.partition:
        p["partition"] = cluster.partition
    env_lines = [f"export {k}={shlex.quote(v)}" for k, v in job_environment().items()]
    # the cluster's own variables may name $SCRATCH and the like: expanded in the job, so double quotes
    env_lines += [f'export {k}="{v}"' for k, v in cluster.env.items()]
    if not (cluster.gpus_per_node and st.gpus_per_node):  # CPU stages: one thread per allocated core
        env_lines.append(f"export OMP_NUM_THREADS={p['cpus_per_task']}")
    elif st.nodes * st.gpus_per_node > 1:  # a failed rank aborts the job, not hangs it (Alliance DeepSpeed page)
        env_lines += ["export NCCL_ASYNC_ERROR_HANDLING=1", "export TORCH_NCCL_ASYNC_ERROR_HANDLING=1"]
    if cluster.stage_inputs and st.kind == "train":  # model inputs copied to node-local $SLURM_TMPDIR (staging.py)
        env_lines.append("export TAKD_STAGE_INPUTS=1")
    p["setup"] = list(cluster.setup) + env_lines
    return p


def make_executor(kind: str, folder: Path):
    if kind == "slurm":
        return submitit.SlurmExecutor(folder=str(folder), max_num_timeout=10)
    if kind == "local":
        return submitit.LocalExecutor(folder=str(folder))
    return submitit.DebugExecutor(folder=str(folder))


def default_executor() -> str:
    return "slurm" if shutil.which("sbatch") else "local"


def sbatch_script(run_dir: Path, stages: list[PlannedStage], meta: dict, stage_name: str) -> str:
    """The sbatch file submitit would write for one stage (for review before submitting)."""
    from submitit.slurm.slurm import _make_sbatch_string

    st = next((s for s in stages if s.name == stage_name), None)
    if st is None:
        raise ConfigError(f"no stage {stage_name!r}; stages: {', '.join(s.name for s in stages)}")
    params = slurm_parameters(st, load_cluster(meta["cluster"]), meta.get("account"))
    folder = stage_dir(run_dir, st.name) / "slurm" / "%j"
    return _make_sbatch_string(command=f"{sys.executable} -u -m submitit.core._submit '{folder}'",
                               folder=str(folder), map_count=None, **params)


def launch(run_dir: Path, stages: list[PlannedStage], meta: dict, executor: str | None = None,
           wait: bool = False) -> int:
    kind = executor or meta.get("executor") or default_executor()
    todo = [s for s in stages if not is_done(stage_dir(run_dir, s.name), s.kind)]
    skipped = len(stages) - len(todo)
    if skipped:
        print(f"{skipped} stage(s) already DONE, skipped.")
    if kind == "slurm":
        return _launch_slurm(run_dir, todo, meta, wait)
    workers = (meta.get("local_workers") or load_cluster(meta["cluster"]).local_workers) if kind == "local" else 1
    return _run_locally(run_dir, todo, kind, max(1, workers))


def _run_locally(run_dir: Path, todo: list[PlannedStage], kind: str, workers: int) -> int:
    """Stages on this machine as their dependencies allow, up to `workers` at a time, each its own process (local)
    with the machine's cores shared out (OMP_NUM_THREADS); debug: one at a time, in this process. A failed stage
    stops new starts; the running ones finish."""
    threads = max(1, (os.cpu_count() or 1) // workers)
    if workers > 1:
        _build_shared_inputs(todo)  # tiny models and the built-in tokenizer: built once, before stages race for them
    t0 = time.time()
    timings: dict[str, float] = {}
    waiting = list(todo)
    running: dict[str, tuple] = {}  # stage -> (job, start time, lines echoed)
    failed = False
    while waiting or running:
        pending = {st.name for st in waiting} | set(running)
        while not failed and len(running) < workers and \
                (ready := next((st for st in waiting if not set(st.depends_on) & pending), None)) is not None:
            waiting.remove(ready)
            running[ready.name] = (_start(run_dir, ready, kind, threads if workers > 1 else None), time.time(), 0)
        for name, (job, started, seen) in list(running.items()):
            finished = job.done()
            running[name] = (job, started, _echo(job, seen))  # after done(): a finished job's last lines too
            if not finished:
                continue
            del running[name]
            try:
                job.result()
            except Exception as err:  # the job's own traceback is in its log
                print(f"error: stage {name} failed: {failure_cause(err)}; log: {stage_dir(run_dir, name) / 'logs'}; "
                      f"fix and rerun: python -m takd.plan --resume {run_dir}", file=sys.stderr)
                failed = True
                continue
            timings[name] = time.time() - started
            print(f"    {name} done in {timings[name]:.0f}s", flush=True)
        if failed and not running:
            return 1
        if running:
            time.sleep(0.5)
    _write_timings(run_dir, timings, time.time() - t0)
    _summarise(run_dir)
    return 0


def _start(run_dir: Path, st: PlannedStage, kind: str, threads: int | None):
    """Submit one stage; with `threads`, its process gets that many (submitit's local jobs inherit the environment)."""
    ex = make_executor(kind, stage_dir(run_dir, st.name) / "logs")
    if kind == "local":
        ex.update_parameters(timeout_min=st.time_min)
    print(f"==> {st.name} ({st.config.method if st.kind == 'train' else 'eval'})", flush=True)
    before = os.environ.get("OMP_NUM_THREADS")
    if threads is not None:
        os.environ["OMP_NUM_THREADS"] = str(threads)
    try:
        return ex.submit(StageJob(str(stage_dir(run_dir, st.name)), st.kind))
    finally:  # this process keeps its own setting
        if threads is not None and before is None:
            del os.environ["OMP_NUM_THREADS"]
        elif threads is not None:
            os.environ["OMP_NUM_THREADS"] = before


def _build_shared_inputs(todo: list[PlannedStage]) -> None:
    from takd.models.loading import model_dir
    from takd.models.registry import resolve

    for name in sorted({m for st in todo for m in stage_models(st)}):
        if resolve(name).is_tiny:
            model_dir(name)


def _summarise(run_dir: Path) -> None:
    """The direct-vs-TA table on the console, and the full report beside the run."""
    from takd.report.build import build_report
    from takd.report.collect import print_summary

    print_summary(run_dir)
    report = build_report([run_dir], run_dir / "report")
    print(f"report: {report}")


def _echo(job, seen: int) -> int:
    """Echo the job's new stdout lines that are our own one-line progress prints; the count of lines read."""
    path = Path(job.paths.stdout)
    if not path.is_file():
        return seen
    lines = path.read_text(errors="replace").splitlines()
    for line in lines[seen:]:
        if line.startswith("[") and not line.startswith("[20"):  # our "[stage] ..." lines, not library logs
            print(f"    {line}", flush=True)
    return len(lines)


def _write_timings(run_dir: Path, timings: dict[str, float], total: float) -> None:
    f = run_dir / "timings.yaml"
    old = yaml.safe_load(f.read_text()) if f.is_file() else {}
    old.update({k: round(v, 1) for k, v in timings.items()})
    old["_total_last_launch_s"] = round(total, 1)
    f.write_text(yaml.safe_dump(old, sort_keys=False))


def _launch_slurm(run_dir: Path, todo: list[PlannedStage], meta: dict, wait: bool) -> int:
    cluster = load_cluster(meta["cluster"])
    record = run_dir / "jobs.yaml"
    job_ids: dict[str, str] = {}
    jobs = []
    live = _settle_earlier_jobs(yaml.safe_load(record.read_text()) if record.is_file() else {}, todo)
    for st in todo:
        if st.name in live:  # still running from an earlier launch: never two writers on one stage
            job_ids[st.name] = live[st.name]
            print(f"running   {st.name:34s} job {live[st.name]} (earlier launch; not resubmitted)", flush=True)
            continue
        ex = make_executor("slurm", stage_dir(run_dir, st.name) / "slurm" / "%j")
        params = slurm_parameters(st, cluster, meta.get("account"))
        deps = [job_ids[d] for d in st.depends_on if d in job_ids]
        if deps:  # a dependant whose parent failed is cancelled at once, not left PENDING forever
            params["additional_parameters"] = {"dependency": "afterok:" + ":".join(deps), "kill_on_invalid_dep": "yes"}
        ex.update_parameters(**params)
        job = ex.submit(StageJob(str(stage_dir(run_dir, st.name)), st.kind))
        job_ids[st.name] = job.job_id
        jobs.append((st, job))
        print(f"submitted {st.name:34s} job {job.job_id}" + (f"  after {','.join(deps)}" if deps else ""),
              flush=True)
    old = yaml.safe_load(record.read_text()) if record.is_file() else {}
    old.update(job_ids)
    record.write_text(yaml.safe_dump(old, sort_keys=False))
    print(f"\nfollow with: python -m takd.status {run_dir}")
    if not wait:
        return 0
    failed = 0
    for st, job in jobs:
        try:
            job.results()  # every task's result: multi-task (one per device) jobs have several
        except Exception as err:
            failed += 1
            print(f"stage {st.name} (job {job.job_id}) did not complete: {type(err).__name__}", file=sys.stderr)
    if not failed:
        _summarise(run_dir)
    return 1 if failed else 0


def _settle_earlier_jobs(recorded: dict[str, str], todo: list[PlannedStage]) -> dict[str, str]:
    """Before a --resume submits: jobs of an earlier launch that are still PENDING (e.g. dependants of a failed
    stage, waiting on a dependency that can never be met) are cancelled, since fresh ones replace them; those still
    RUNNING are returned (stage name -> job id) and are not submitted again."""
    ids = {str(recorded[st.name]): st.name for st in todo if st.name in recorded}
    if not ids:
        return {}
    try:
        out = subprocess.run(["squeue", "-h", "-o", "%i %T", "-j", ",".join(ids)], capture_output=True, text=True,
                             timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    states = dict(line.split()[:2] for line in out.splitlines() if len(line.split()) >= 2)
    stale = [job for job, state in states.items() if state == "PENDING" and job in ids]
    if stale:
        subprocess.run(["scancel", *stale], capture_output=True, timeout=30)
        print(f"cancelled {len(stale)} stale pending job(s) of an earlier launch: {', '.join(stale)}", flush=True)
    return {ids[job]: job for job, state in states.items()
            if job in ids and state in ("RUNNING", "CONFIGURING", "COMPLETING", "REQUEUED", "RESIZING")}


def failure_cause(err: BaseException) -> str:
    """The exception line of a failed job's traceback (submitit's error text ends with log paths, not the cause)."""
    lines = [x.strip() for x in str(err).splitlines() if x.strip()]
    pattern = re.compile(r"^([A-Za-z_][\w.]*)(Error|Exception|Exit|Interrupt|NotPrepared|Locked|Loss|Preempted)\b")
    cause = next((x for x in reversed(lines) if pattern.match(x)), None)
    return (cause or (lines[0] if lines else type(err).__name__))[:300]
