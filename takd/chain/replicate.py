"""Evaluate the MiniLLM authors' released checkpoints with the paper's protocol, for a Table 1 replication.

    python -m takd.replicate --family gpt2 --cluster narval                 # print the plan (a dry run)
    python -m takd.replicate --family gpt2 --cluster narval --account def-me --submit
    python -m takd.report RUN_DIR                                          # each cell beside the paper's

One evaluation stage per released checkpoint of the family (the teacher; init, SFT, KD, SeqKD and MiniLLM of every
student size; `--sizes` narrows it) on the paper's five sets (Dolly, SelfInst, Vicuna, S-NI, UnNI) with sampling
seeds 10, 20, 30, 40, 50, 256 new tokens after prompts of at most 256 (reference §7). No training: GPU-hours go to
generation only. `--judge-url` adds the GPT-4-feedback column (any OpenAI-compatible endpoint; the key from
$TAKD_JUDGE_API_KEY); without it the report says "not run". First, on a login node:

    python -m takd.prepare --models <the listed checkpoints> --datasets dolly,selfinst,vicuna,sni,unni
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from dataclasses import asdict
from pathlib import Path

from takd.chain.allocate import assign_resources
from takd.chain.cli import check_run_dir, resolve_account
from takd.chain.plan import PlannedStage, check_offline, plan_table, slug, write_plan
from takd.chain.profiles import load_cluster, load_profile, profile_path
from takd.config import ConfigError
from takd.data.authors import PAPER_SETS
from takd.data.rows import unknown_dataset
from takd.errors import cli
from takd.evaluate.config import PROTOCOL_SEEDS, EvalJob
from takd.models import registry
from takd.paths import git_revision, runs_root, stage_dir


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m takd.replicate", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--family", required=True, choices=sorted({s.family for s in registry.released()}),
                    help="the released checkpoints of this family")
    ap.add_argument("--sizes", default="", help="comma list of student sizes to keep, e.g. 120m (default: all)")
    ap.add_argument("--roles", default="teacher,init,sft,kd,seqkd,minillm",
                    help="comma list of roles to evaluate (default: every released one)")
    ap.add_argument("--datasets", default=",".join(PAPER_SETS), help="comma list (default: the paper's five)")
    ap.add_argument("--max-prompts", type=int, default=0, help="evaluate the first N prompts per set (0 = all)")
    ap.add_argument("--judge-url", default=None, help="OpenAI-compatible endpoint for the GPT-4-feedback column")
    ap.add_argument("--judge-model", default=None, help="judge model name (default gpt-4)")
    ap.add_argument("--cluster", default=None, help="takd/configs/clusters/<name>.yaml (default: local)")
    ap.add_argument("--account", default=None, help="Slurm account (else $SLURM_ACCOUNT or ~/.config/takd.yaml)")
    ap.add_argument("--executor", choices=["slurm", "local", "debug"], default=None)
    ap.add_argument("--run-dir", default=None, help="default: $SCRATCH/takd-runs/replicate-<family>-<time>")
    ap.add_argument("--submit", action="store_true", help="write the run directory and submit every stage")
    ap.add_argument("--wait", action="store_true", help="with slurm: block until every stage has finished")
    return ap


def released_models(family: str, sizes: list[str], roles: list[str]) -> list[registry.ModelSpec]:
    """The family's released checkpoints to evaluate: the teacher first, then each student size's roles."""
    bad = [r for r in roles if r not in registry.ROLES]
    if bad:
        raise ConfigError(f"--roles: unknown role {bad[0]!r}; expected {', '.join(registry.ROLES)}")
    out = [s for s in registry.released(family=family) if s.role in roles
           and (s.role == "teacher" or not sizes or s.base.split("-")[-1] in sizes)]
    if not any(s.role != "teacher" for s in out) and sizes:
        known = sorted({s.base.split("-")[-1] for s in registry.released(family=family) if s.role != "teacher"})
        raise ConfigError(f"--sizes {','.join(sizes)}: the authors released {family} students of {', '.join(known)}")
    return sorted(out, key=lambda s: (s.role != "teacher", s.params_m, registry.ROLES.index(s.role)))


def eval_stages(models: list[registry.ModelSpec], run_dir: Path, args) -> list[PlannedStage]:
    settings = load_profile(profile_path("default")).eval
    base = {**asdict(settings), "datasets": [d for d in args.datasets.split(",") if d], "split": "test",
            "seeds": list(PROTOCOL_SEEDS), "max_prompts": args.max_prompts, "judge_url": args.judge_url,
            "judge_model": args.judge_model, "exposure_bias": False, "prompt_format": "alpaca"}
    stages = []
    for spec in models:
        name = f"eval-{spec.name}"
        job = EvalJob(**base, model=spec.name, output_dir=str(stage_dir(run_dir, name)),
                      meta={"stage": spec.name, "model": spec.name, "method": spec.role, "label": spec.name,
                            "teacher": ""})
        stages.append(PlannedStage(name, "eval", spec.name, [], job, spec.name))
    return stages


@cli
def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    sizes = [s.strip().lower() for s in args.sizes.split(",") if s.strip()]
    models = released_models(args.family, sizes, [r.strip() for r in args.roles.split(",") if r.strip()])
    cluster = load_cluster(args.cluster or "local")
    account = resolve_account(args, cluster)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    run_dir = (Path(args.run_dir) if args.run_dir else runs_root() / f"replicate-{slug(args.family)}-{stamp}").resolve()
    check_run_dir(run_dir, args.submit, args.executor)
    for ds in [d for d in args.datasets.split(",") if d]:
        if (why := unknown_dataset(ds)) is not None:
            raise ConfigError(f"--datasets: {why}")
    stages = eval_stages(models, run_dir, args)
    try:
        check_offline([m.name for m in models], {d: ("test",) for d in stages[0].config.datasets})
    except ConfigError as err:
        if args.submit:
            raise
        print(f"warning: {err}", file=sys.stderr)
    assign_resources(stages, cluster)
    print(f"The authors' released {args.family} checkpoints ({len(models)}):")
    for m in models:
        print(f"  {m.name:26s} {m.hf_id:30s} {m.role:8s} {m.params_m:8,.0f}M  (name from: "
              f"{registry.released_entries()[m.name].source})")
    print()
    print(plan_table(stages, cluster.rgu_per_gpu))
    if not args.submit:
        print(f"\n{len(stages)} stages. Nothing written; add --submit to create {run_dir} and submit.")
        return 0
    meta = {"chain": [], "replicate": args.family, "profile": "replicate", "cluster": cluster.name,
            "account": account, "executor": args.executor, "git": git_revision(),
            "created": dt.datetime.now().isoformat(timespec="seconds")}
    write_plan(run_dir, stages, meta)
    from takd.chain.launch import launch

    return launch(run_dir, stages, meta, executor=args.executor, wait=args.wait)
