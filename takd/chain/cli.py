"""Plan (and submit) a teacher-assistant distillation chain.

    python -m takd.plan --chain opt-13b,opt-6.7b,opt-1.3b                   # print the plan, write nothing else
    python -m takd.plan --chain opt-13b,opt-6.7b,opt-1.3b --submit --cluster narval --account def-me
    python -m takd.plan --chain tiny-l,tiny-m,tiny-s --executor local --submit   # the embedded default, on a CPU

The chain T → A … → S becomes a DAG of stages:
  sft-T                 teacher SFT (or `--teacher-path` / a released teacher: start from an already fine-tuned one)
  init-X                SFT init of every assistant and of the student (lowest validation loss kept; none for a
                        released init: `--released`, or a chain naming paper-init-<model>)
  <method>-T-to-A, …    distillation along the chain; each stage's teacher is the previous stage's final HF dir
  <method>-T-to-S       the direct baseline (on by default; --no-direct to skip)
  baseline-<m>-S        optional baselines (--baselines sft,kd,seqkd), from the student's base model
  eval-…                evaluation of the teacher, every distilled model and every baseline
Each stage is one submitit job; on Slurm they are chained with afterok dependencies. A stage writes DONE only
after its final HF checkpoint is complete and loads; `--resume RUN_DIR` skips DONE stages.
GPUs per stage come from a memory estimate (takd/chain/resources.py): the fewest GPUs that fit, then the least
sharding (ZeRO-1 < 2 < 3, teacher replicated < teacher ZeRO-3), the student gathered whole for generation when
that fits. The plan's ZeRO column shows the choice; `--set deepspeed.zero_stage=3` (or teacher_placement,
gather_for_generation, offload_optimizer) overrides it; a chain profile's `deepspeed:` keys are kept when they fit
(the plan notes any it had to replace).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import re
import shutil
import socket
import sys
from pathlib import Path

from takd import config as cfglib
from takd.chain.allocate import assign_resources
from takd.chain.plan import (
    METHODS,
    PlannedStage,
    build_plan,
    check_corpora,
    check_offline,
    check_positions,
    check_prompt_formats,
    check_teacher_path,
    check_trackers,
    plan_table,
    read_plan,
    substitute_released,
    validate_chain,
    write_plan,
)
from takd.chain.profiles import BASELINES, ClusterProfile, default_profile, load_cluster, load_profile
from takd.chain.profiles import profile_path as chain_profile_path
from takd.config import ConfigError
from takd.data.rows import unknown_dataset
from takd.errors import cli
from takd.paths import git_revision, runs_root


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m takd.plan", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--chain", help="comma list, largest first: teacher,assistant(s)...,student")
    ap.add_argument("--method", choices=METHODS, default=None, help="distillation method (default: profile's)")
    ap.add_argument("--ta", default=None, help="TA-size sweep: 'opt-2.7b|opt-6.7b' -> one chain per TA")
    ap.add_argument("--no-direct", action="store_true", help="skip the direct teacher->student baseline")
    ap.add_argument("--no-eval", action="store_true", help="plan no evaluation stages (train only)")
    ap.add_argument("--baselines", default=None, help="comma list of extra student baselines: sft,kd,seqkd, or "
                    "none (default: the profile's `baselines`; the tiny profile runs kd,seqkd)")
    ap.add_argument("--teacher-path", default=None, help="an already fine-tuned teacher (HF dir): skips teacher SFT")
    ap.add_argument("--released", action="store_true", help="start from the MiniLLM authors' released checkpoints "
                    "where they published one: their teacher instead of teacher SFT, their inits instead of init SFT "
                    "(a chain may also name them: paper-teacher-gpt2-1.5b,paper-init-gpt2-120m)")
    ap.add_argument("--profile", default=None, help="chain profile: a YAML path or a packaged name (tiny, default, "
                    "smollm2-cpu); default: tiny for tiny models, else default")
    ap.add_argument("--train-seeds", default="", metavar="K,K,...",
                    help="training seeds: the distillation and baseline stages are planned once per seed (from the "
                         "same teacher and inits, named <stage>-seed<k>); the report pools the replicates")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override a stage config key for every training stage that has it, e.g. --set "
                         "max_steps=100 or --set minillm.gamma=1")
    ap.add_argument("--executor", choices=["slurm", "local", "debug"], default=None,
                    help="slurm: sbatch with afterok dependencies; local: stages in order on this machine "
                         "(subprocesses); debug: in this process (default: slurm if sbatch exists, else local)")
    ap.add_argument("--local-workers", type=int, default=None, metavar="N",
                    help="local executor: stages run at once when their dependencies allow, the cores shared out "
                         "(default: the cluster profile's local_workers)")
    ap.add_argument("--cluster", default=None, help="takd/configs/clusters/<name>.yaml: narval, rorqual, fir, nibi, "
                                                    "trillium, local (default: local)")
    ap.add_argument("--account", default=None, help="Slurm account (else $SLURM_ACCOUNT or ~/.config/takd.yaml)")
    ap.add_argument("--run-dir", default=None, help="where the run lives (default: $SCRATCH/takd-runs/<chain>-<time>)")
    ap.add_argument("--submit", action="store_true", help="write the run directory and submit every stage")
    ap.add_argument("--resume", default=None, metavar="RUN_DIR", help="continue a run: skip stages marked DONE")
    ap.add_argument("--wait", action="store_true", help="with slurm: block until every stage has finished")
    ap.add_argument("--show-sbatch", default=None, metavar="STAGE", help="print the sbatch script of a stage")
    return ap


def resolve_account(args, cluster: ClusterProfile) -> str | None:
    account = args.account or os.environ.get("SLURM_ACCOUNT")
    user_cfg = Path.home() / ".config" / "takd.yaml"
    if not account and user_cfg.is_file():
        account = (cfglib.read_yaml(user_cfg) or {}).get("account")
    if cluster.account_required and not account:
        raise ConfigError(f"cluster {cluster.name} needs a Slurm account: pass --account def-yourpi (or set "
                          "SLURM_ACCOUNT, or `account:` in ~/.config/takd.yaml)")
    if account is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", str(account)):
        # it lands in the sbatch script: a newline or a quote there would be a shell injection
        raise ConfigError(f"Slurm account {str(account)!r} is not an account name (letters, digits, _ . - only), "
                          "e.g. --account def-yourpi")
    return account


def check_run_dir(run_dir: Path, submit: bool, executor: str | None) -> None:
    """A new run's directory: not one that already holds a run (when submitting), and for Slurm free of spaces,
    quotes and shell characters (Slurm writes its log paths unquoted). Shared by every command that launches."""
    if submit and (run_dir / "plan.yaml").exists():
        raise ConfigError(f"run directory {run_dir} already holds a run; use --resume {run_dir} to continue it, "
                          "or pick another --run-dir")
    slurm = (executor or ("slurm" if shutil.which("sbatch") else "local")) == "slurm"
    if slurm and re.search(r"[\s'\"$`\\;|&<>]", str(run_dir.resolve())):
        raise ConfigError(f"run directory {str(run_dir.resolve())!r} contains a space, quote or shell character: "
                          "Slurm writes its log paths unquoted; choose --run-dir without them")


def train_seeds(text: str) -> list[int] | None:
    """--train-seeds 1,2,3: distinct non-negative integers (None: the profile's seed only)."""
    if not text.strip():
        return None
    try:
        seeds = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"--train-seeds {text!r}: give integers separated by commas, e.g. --train-seeds 1,2,3") \
            from None
    if any(k < 0 for k in seeds) or len(set(seeds)) != len(seeds):
        raise ConfigError(f"--train-seeds {text!r}: seeds must be distinct and >= 0")
    return seeds


def prepare_run(args) -> tuple[Path, list[PlannedStage], dict]:
    """Everything up to (not including) submission; raises ConfigError on any bad input."""
    if args.resume:
        run_dir = Path(args.resume)
        if not (run_dir / "plan.yaml").is_file():
            raise ConfigError(f"--resume {run_dir}: no plan.yaml there (was it made with --submit?)")
        meta, stages = read_plan(run_dir)
        return run_dir, stages, meta
    if not args.chain:
        raise ConfigError("give --chain teacher,...,student (or --resume RUN_DIR)")
    chain = [m.strip() for m in args.chain.split(",") if m.strip()]
    if args.released:
        chain, notes = substitute_released(chain)
        for note in notes or ["no released checkpoint matches this chain's models"]:
            print(f"note: --released: {note}", file=sys.stderr)
    tas = [t.strip() for t in args.ta.split("|")] if args.ta else None
    if tas and len(chain) != 2:
        raise ConfigError("--ta expects --chain teacher,student (the TA comes from --ta)")
    validate_chain(chain)
    profile_path = chain_profile_path(args.profile) if args.profile else default_profile(chain)
    profile = load_profile(profile_path)
    cluster = load_cluster(args.cluster or "local")
    account = resolve_account(args, cluster)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    run_dir = Path(args.run_dir) if args.run_dir else runs_root() / f"{'-'.join(chain)}-{stamp}"
    check_run_dir(run_dir, args.submit, args.executor)
    baselines = tuple(profile.baselines) if args.baselines is None else \
        tuple(b.strip() for b in args.baselines.split(",") if b.strip() not in ("", "none"))
    if bad := [b for b in baselines if b not in BASELINES]:
        raise ConfigError(f"--baselines: unknown baseline {bad[0]!r}; expected {', '.join(BASELINES)}")
    for ds in [profile.dataset, *profile.eval.datasets]:
        if (why := unknown_dataset(ds)) is not None:
            raise ConfigError(f"{profile_path}: {why}")
    datasets = {profile.dataset: ("train", "valid")}
    for ds in ([] if args.no_eval else profile.eval.datasets):
        datasets[ds] = tuple(sorted(set(datasets.get(ds, ())) | {profile.eval.split}))
    try:
        check_offline(chain + (tas or []), datasets)
    except ConfigError as err:
        if args.submit:
            raise
        print(f"warning: {err}", file=sys.stderr)  # a dry run is still worth reading
    if args.teacher_path:
        check_teacher_path(args.teacher_path, chain[-1])
    stages = build_plan(chain, run_dir=run_dir.resolve(), profile=profile, method=args.method,
                        direct=not args.no_direct, baselines=baselines, teacher_path=args.teacher_path, tas=tas,
                        overrides=args.overrides, evaluate=not args.no_eval, train_seeds=train_seeds(args.train_seeds))
    try:
        check_corpora(stages)
    except ConfigError as err:
        if args.submit:
            raise
        print(f"warning: {err}", file=sys.stderr)
    check_positions(stages)
    check_prompt_formats(stages)
    check_trackers(stages)
    assign_resources(stages, cluster)
    if args.local_workers is not None and args.local_workers < 1:
        raise ConfigError(f"--local-workers {args.local_workers}: give 1 or more")
    meta = {"chain": chain, "tas": tas, "profile": str(profile_path), "cluster": cluster.name, "account": account,
            "executor": args.executor, "local_workers": args.local_workers, "git": git_revision(),
            "created": dt.datetime.now().isoformat(timespec="seconds")}
    return run_dir.resolve(), stages, meta


@cli
def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    run_dir, stages, meta = prepare_run(args)
    if args.show_sbatch:
        from takd.chain.launch import sbatch_script

        print(sbatch_script(run_dir, stages, meta, args.show_sbatch))
        return 0
    print(plan_table(stages, load_cluster(meta["cluster"]).rgu_per_gpu))
    if not (args.submit or args.resume):
        print(f"\n{len(stages)} stages. Nothing written; add --submit to create {run_dir} and submit.")
        return 0
    cluster = load_cluster(meta["cluster"])
    if cluster.submit_host and not socket.getfqdn().startswith(cluster.submit_host.split(".")[0]):
        print(f"note: {cluster.name} takes GPU jobs from its GPU login node {cluster.submit_host} (this is "
              f"{socket.getfqdn()}); sbatch may refuse them from here", file=sys.stderr)
    if not args.resume:
        write_plan(run_dir, stages, meta)
    from takd.chain.launch import launch

    return launch(run_dir, stages, meta, executor=args.executor, wait=args.wait)
