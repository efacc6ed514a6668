"""Plan (and submit) a teacher-assistant distillation chain.

    python -m takd.plan --chain opt-13b,opt-6.7b,opt-1.3b                   # print the plan, write nothing else
    python -m takd.plan --chain opt-13b,opt-6.7b,opt-1.3b --submit --cluster narval --account def-me
    python -m takd.plan --chain tiny-l,tiny-m,tiny-s --executor local --submit   # the embedded default, on a CPU

The chain T → A … → S becomes a DAG of stages:
  sft-T                 teacher SFT (or `--teacher-path` to start from an already fine-tuned teacher)
  init-X                SFT init of every assistant and of the student (lowest validation loss kept)
  <method>-T-to-A, …    distillation along the chain; each stage's teacher is the previous stage's final HF dir
  <method>-T-to-S       the direct baseline (on by default; --no-direct to skip)
  sft|kd|seqkd-…-S      optional baselines (--baselines sft,kd,seqkd), from the student's base model
  eval-…                evaluation of the teacher, every distilled model and every baseline
Each stage is one submitit job; on Slurm they are chained with afterok dependencies. A stage writes DONE only
after its final HF checkpoint is complete and loads; `--resume RUN_DIR` skips DONE stages.
GPUs per stage come from a memory estimate (takd/resources.py): the fewest GPUs that fit, then the least
sharding (ZeRO-1 < 2 < 3, teacher replicated < teacher ZeRO-3), the student gathered whole for generation when
that fits. The plan's ZeRO column shows the choice; `--set deepspeed.zero_stage=3` (or teacher_placement,
gather_for_generation, offload_optimizer) overrides it.
"""

from __future__ import annotations

import argparse
import datetime as dt
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from takd import config as cfglib
from takd import models
from takd.config import ConfigError
from takd.paths import CONFIG_DIR, SLURM_DIR, runs_root
from takd.resources import choose_allocation
from takd.stage import StageConfig, method_defaults

METHODS = ("minillm", "kd", "seqkd", "sft")
ROLE_HOURS = {"sft": 12, "init": 12, "distill": 24, "baseline": 12, "eval": 2}  # default time limits


@dataclass
class EvalSettings:
    datasets: list[str] = field(default_factory=lambda: ["builtin"])
    split: str = "test"
    seeds: list[int] = field(default_factory=lambda: [10, 20, 30, 40, 50])
    max_prompts: int = 0  # 0 = all
    max_new_tokens: int = 256
    max_prompt_tokens: int = 256
    batch_size: int = 16  # prompts per generate call
    exposure_bias: bool = False  # ExAccErr of each distilled model against its own teacher
    exposure_prompts: int = 50  # prompts for the exposure-bias estimate
    calibration: str | None = None  # "builtin" or a JSONL of classification items (ECE, accuracy)


@dataclass
class ChainProfile:
    dataset: str = "dolly"
    method: str = "minillm"
    common: dict[str, Any] = field(default_factory=dict)
    sft: dict[str, Any] = field(default_factory=dict)
    init: dict[str, Any] = field(default_factory=dict)
    distill: dict[str, Any] = field(default_factory=dict)
    baseline: dict[str, Any] = field(default_factory=dict)
    per_model: dict[str, Any] = field(default_factory=dict)
    eval: EvalSettings = field(default_factory=EvalSettings)


@dataclass
class ClusterProfile:
    name: str
    gpu_type: str
    gpu_mem_gb: float
    gpus_per_node: int
    cpus_per_gpu: int
    mem_gb_per_gpu: float
    max_time_hours: float
    account_required: bool
    internet_on_compute: bool
    setup: list[str] = field(default_factory=list)
    partition: str | None = None
    cpus_per_task: int = 0  # CPU-only profiles (local): cores per stage
    cpu_tasks_per_node: int = 1  # CPU-only profiles: processes per training stage (DeepSpeed on gloo when > 1)
    mem_gb: float = 0  # CPU-only profiles (local): memory per stage
    whole_node_only: bool = False


@dataclass
class PlannedStage:
    name: str
    kind: Literal["train", "eval"]
    role: str  # sft | init | distill | baseline | eval
    model: str  # registry name of the model trained (or evaluated)
    depends_on: list[str]
    config: dict[str, Any]  # resolved StageConfig (train) or evaluation spec (eval)
    label: str = ""  # teacher | ta | via-ta | direct | baseline-<m> | init
    nodes: int = 1
    gpus_per_node: int = 0
    time_min: int = 60
    mem_per_gpu_gb: float = 0.0
    zero_stage: int = 0
    teacher_placement: str = ""
    teacher_model: str = ""  # registry name of the teacher's model (its architecture/size), for the memory estimate


def load_cluster(name: str) -> ClusterProfile:
    path = SLURM_DIR / "clusters" / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in (SLURM_DIR / "clusters").glob("*.yaml"))
        raise ConfigError(f"unknown cluster {name!r}; profiles: {', '.join(known)} (slurm/clusters/*.yaml)")
    return cfglib.load(ClusterProfile, path)


def default_profile(chain: list[str]) -> Path:
    tiny = all(models.resolve(m).is_tiny for m in chain)
    return CONFIG_DIR / "chains" / ("tiny.yaml" if tiny else "default.yaml")


# ------------------------------------------------------------------------------------------------ checks
def validate_chain(chain: list[str]) -> list[models.ModelSpec]:
    """Every check that can fail before anything is written or submitted, each a one-line ConfigError."""
    if len(chain) < 2:
        raise ConfigError(f"a chain needs at least a teacher and a student (got {chain}); e.g. "
                          "--chain opt-13b,opt-6.7b,opt-1.3b")
    dupes = sorted({m for m in chain if chain.count(m) > 1})
    if dupes:
        raise ConfigError(f"model {dupes[0]!r} appears twice in the chain {','.join(chain)}")
    specs = [models.resolve(m) for m in chain]
    for big, small in zip(specs, specs[1:], strict=False):
        if big.params_m and small.params_m and small.params_m >= big.params_m:
            raise ConfigError(f"{small.name} ({small.params_m:g}M params) is not smaller than its teacher {big.name} "
                              f"({big.params_m:g}M); order the chain from the largest model to the smallest")
    toks = {s.tokenizer for s in specs}
    if len(toks) > 1:
        pairs = ", ".join(f"{s.name}: {s.tokenizer}" for s in specs)
        raise ConfigError(f"the chain mixes tokenizers ({pairs}); token-level distillation needs one vocabulary: "
                          "use models of one family")
    return specs


def check_offline(chain: list[str]) -> None:
    missing = [m for m in chain if not models.is_available_offline(m)]
    if missing:
        raise ConfigError(f"not in the local cache (jobs run offline): {', '.join(missing)}; on a login node run: "
                          f"{models.prepare_command(missing)}")


# ------------------------------------------------------------------------------------------------ planning
def _section(profile: ChainProfile, role: str, model: str) -> dict:
    base = cfglib.merge(profile.common, getattr(profile, role))
    return cfglib.merge(base, profile.per_model.get(model, {}).get(role, {}))


def _stage_config(profile: ChainProfile, role: str, method: str, name: str, model: str, student: str,
                  teacher: str | None, run_dir: Path, overrides: list[str]) -> dict:
    data = cfglib.merge(method_defaults(method), _section(profile, role, model))
    data.update({"name": name, "method": method, "student": student, "teacher": teacher, "dataset": profile.dataset,
                 "output_dir": str(run_dir / "stages" / name)})
    data = cfglib.apply_overrides(data, overrides)
    cfg = cfglib.from_dict(StageConfig, data, f"stage {name}")  # validate now, before anything is submitted
    return cfglib.to_dict(cfg)


def final_dir(run_dir: Path, stage: str) -> str:
    return str(run_dir / "stages" / stage / "final")


def build_plan(chain: list[str], *, run_dir: Path, profile: ChainProfile, method: str | None = None,
               direct: bool = True, baselines: tuple[str, ...] = (), teacher_path: str | None = None,
               tas: list[str] | None = None, overrides: list[str] | None = None, evaluate: bool = True
               ) -> list[PlannedStage]:
    """The stage DAG (topologically ordered) for one chain, or one chain per TA when `tas` is given."""
    method = method or profile.method
    if method not in METHODS:
        raise ConfigError(f"unknown method {method!r}; expected one of {', '.join(METHODS)}")
    chains = [[chain[0], ta, chain[-1]] for ta in tas] if tas else [chain]
    overrides = overrides or []
    stages: dict[str, PlannedStage] = {}

    def add(stage: PlannedStage) -> None:
        stages.setdefault(stage.name, stage)

    def train(role, meth, name, model, student_init, teacher_stage_or_path, deps, label):
        if teacher_stage_or_path in stages:  # a stage of this plan: its final/ directory, its model's size
            teacher, teacher_model = final_dir(run_dir, teacher_stage_or_path), stages[teacher_stage_or_path].model
        else:  # a registry name or an already fine-tuned HF directory (--teacher-path)
            teacher = teacher_stage_or_path
            teacher_model = models.base_model_name(teacher) if teacher else ""
        init = final_dir(run_dir, student_init) if student_init in stages else student_init
        add(PlannedStage(name, "train", role, model, deps,
                         _stage_config(profile, role, meth, name, model, init, teacher, run_dir, overrides), label,
                         teacher_model=teacher_model))

    for ch in chains:
        validate_chain(ch)
        t = ch[0]
        teacher_stage = teacher_path or f"sft-{t}"
        if not teacher_path:
            train("sft", "sft", f"sft-{t}", t, t, None, [], "teacher")
        for m in ch[1:]:
            train("init", "sft", f"init-{m}", m, m, None, [], "init")
        prev = teacher_stage
        for i, m in enumerate(ch[1:], start=1):
            name = f"{method}-{ch[i - 1]}-to-{m}"
            deps = [d for d in (prev, f"init-{m}") if d in stages]
            label = "ta" if i < len(ch) - 1 else ("via-ta" if len(ch) > 2 else "direct")
            train("distill", method, name, m, f"init-{m}", prev, deps, label)
            prev = name
        s = ch[-1]
        if direct and len(ch) > 2:
            name = f"{method}-{t}-to-{s}"
            train("distill", method, name, s, f"init-{s}", teacher_stage,
                  [d for d in (teacher_stage, f"init-{s}") if d in stages], "direct")
        for b in baselines:
            name = f"baseline-{b}-{s}"
            deps = [teacher_stage] if b != "sft" and teacher_stage in stages else []
            train("baseline", b, name, s, s, None if b == "sft" else teacher_stage, deps, f"baseline-{b}")
    students = {ch[-1] for ch in chains}
    for st in [x for x in stages.values() if x.kind == "train" and evaluate]:
        if st.role != "init" or st.model in students:  # the student's SFT init shows what distillation adds
            add(_eval_stage(st, profile.eval, run_dir))
    return list(stages.values())


def _eval_stage(st: PlannedStage, ev: EvalSettings, run_dir: Path) -> PlannedStage:
    name = f"eval-{st.name}"
    spec = {"model": final_dir(run_dir, st.name), "output_dir": str(run_dir / "stages" / name),
            "meta": {"stage": st.name, "model": st.model, "method": st.config["method"], "label": st.label,
                     "teacher": st.config.get("teacher") or ""},
            **cfglib.to_dict(ev)}
    return PlannedStage(name, "eval", "eval", st.model, [st.name], spec, st.label)


def assign_resources(stages: list[PlannedStage], cluster: ClusterProfile, pinned: tuple[str, ...] = ()) -> None:
    """Nodes × GPUs, ZeRO stage and teacher placement from the memory estimate; time limit per role.

    pinned: `deepspeed.*` keys the user set with --set; the estimate does not overwrite them (a ZeRO-3 stage the
    estimate did not need still runs as asked; one that is too small for the model fails at run time)."""
    for st in stages:
        st.time_min = int(60 * min(cluster.max_time_hours, ROLE_HOURS[st.role]))
        if cluster.gpus_per_node == 0:
            if st.kind == "train" and cluster.cpu_tasks_per_node > 1:
                st.config["deepspeed"]["enabled"] = True
            continue
        student = models.resolve(st.model).params_m
        teacher = models.resolve(st.teacher_model).params_m if st.kind == "train" and st.teacher_model else 0.0
        alloc = choose_allocation(student if st.kind == "train" else student / 8, teacher, cluster.gpu_mem_gb,
                                  cluster.gpus_per_node)
        if alloc is None:
            raise ConfigError(f"stage {st.name}: {st.model} does not fit on {cluster.max_time_hours:g}h nodes of "
                              f"{cluster.gpus_per_node}x{cluster.gpu_mem_gb:g}GB even with ZeRO-3 on 4 nodes")
        if cluster.whole_node_only and alloc.gpus_per_node not in (1, cluster.gpus_per_node):
            alloc.gpus_per_node = cluster.gpus_per_node
        st.nodes, st.gpus_per_node = alloc.nodes, alloc.gpus_per_node
        st.mem_per_gpu_gb, st.zero_stage, st.teacher_placement = alloc.mem_per_gpu_gb, alloc.zero_stage, \
            alloc.teacher_placement
        if st.kind == "train" and st.nodes * st.gpus_per_node > 1:
            chosen = {"enabled": True, "zero_stage": alloc.zero_stage, "teacher_placement": alloc.teacher_placement,
                      "gather_for_generation": alloc.gather_for_generation}
            st.config["deepspeed"].update({k: v for k, v in chosen.items() if f"deepspeed.{k}" not in pinned})
            st.zero_stage = st.config["deepspeed"]["zero_stage"]
            st.teacher_placement = st.config["deepspeed"]["teacher_placement"]


# ------------------------------------------------------------------------------------------------ display
def plan_table(stages: list[PlannedStage]) -> str:
    head = f"{'stage':34s} {'method':8s} {'teacher':22s} {'student':22s} {'after':30s} {'GPUs':>6s} " \
           f"{'ZeRO':>6s} {'GB/GPU':>7s} {'time':>6s} {'GPU-h':>6s}"
    lines = [head, "-" * len(head)]
    for st in stages:
        teacher = _short(st.config.get("teacher") or "") if st.kind == "train" else ""
        student = _short(st.config.get("student", st.config.get("model", "")))
        gpus = f"{st.nodes}x{st.gpus_per_node}" if st.gpus_per_node else "cpu"
        gpuh = st.nodes * st.gpus_per_node * st.time_min / 60
        method = st.config.get("method", "eval")
        lines.append(f"{st.name:34s} {method:8s} {teacher:22s} {student:22s} {','.join(st.depends_on)[:30]:30s} "
                     f"{gpus:>6s} {_zero_label(st):>6s} {st.mem_per_gpu_gb:7.1f} {st.time_min / 60:5.1f}h "
                     f"{gpuh:6.0f}")
    lines.append("ZeRO: the student's stage (3g: gathered whole for generation); +T3: teacher sharded by ZeRO-3 too; "
                 "+off: optimizer in host memory")
    return "\n".join(lines)


def _zero_label(st: PlannedStage) -> str:
    ds = st.config.get("deepspeed") or {}
    if st.kind != "train" or not ds.get("enabled"):
        return "-"
    gathered = ds["zero_stage"] == 3 and ds.get("gather_for_generation")
    return (f"{ds['zero_stage']}{'g' if gathered else ''}{'+off' if ds.get('offload_optimizer') else ''}"
            f"{'+T3' if ds.get('teacher_placement') == 'zero3' and st.config.get('teacher') else ''}")


def _short(path: str) -> str:
    p = Path(path)
    return p.parent.name if p.name == "final" else path


def write_plan(run_dir: Path, stages: list[PlannedStage], meta: dict) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    for st in stages:
        d = run_dir / "stages" / st.name
        d.mkdir(parents=True, exist_ok=True)
        (d / "stage.yaml").write_text(yaml.safe_dump({"kind": st.kind, **cfglib.to_dict(st)}, sort_keys=False))
    manifest = {**meta, "stages": [cfglib.to_dict(s) for s in stages]}
    (run_dir / "plan.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False))
    return run_dir / "plan.yaml"


def read_plan(run_dir: Path) -> tuple[dict, list[PlannedStage]]:
    manifest = cfglib.read_yaml(run_dir / "plan.yaml")
    stages = [cfglib.from_dict(PlannedStage, s, f"{run_dir}/plan.yaml") for s in manifest.pop("stages")]
    return manifest, stages


def git_revision() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).parent, timeout=5)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


# ------------------------------------------------------------------------------------------------ CLI
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m takd.plan", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--chain", help="comma list, largest first: teacher,assistant(s)...,student")
    ap.add_argument("--method", choices=METHODS, default=None, help="distillation method (default: profile's)")
    ap.add_argument("--ta", default=None, help="TA-size sweep: 'opt-2.7b|opt-6.7b' -> one chain per TA")
    ap.add_argument("--no-direct", action="store_true", help="skip the direct teacher->student baseline")
    ap.add_argument("--no-eval", action="store_true", help="plan no evaluation stages (train only)")
    ap.add_argument("--baselines", default="", help="comma list of extra student baselines: sft,kd,seqkd")
    ap.add_argument("--teacher-path", default=None, help="an already fine-tuned teacher (HF dir): skips teacher SFT")
    ap.add_argument("--profile", default=None, help="chain profile YAML (default: configs/chains/tiny.yaml for tiny "
                                                    "models, else configs/chains/default.yaml)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override a stage config key for every training stage, e.g. --set max_steps=100")
    ap.add_argument("--executor", choices=["slurm", "local", "debug"], default=None,
                    help="slurm: sbatch with afterok dependencies; local: stages in order on this machine "
                         "(subprocesses); debug: in this process (default: slurm if sbatch exists, else local)")
    ap.add_argument("--cluster", default=None, help="slurm/clusters/<name>.yaml: narval, rorqual, fir, nibi, "
                                                    "trillium, local (default: local)")
    ap.add_argument("--account", default=None, help="Slurm account (else $SLURM_ACCOUNT or ~/.config/takd.yaml)")
    ap.add_argument("--run-dir", default=None, help="where the run lives (default: $SCRATCH/takd-runs/<chain>-<time>)")
    ap.add_argument("--submit", action="store_true", help="write the run directory and submit every stage")
    ap.add_argument("--resume", default=None, metavar="RUN_DIR", help="continue a run: skip stages marked DONE")
    ap.add_argument("--wait", action="store_true", help="with slurm: block until every stage has finished")
    ap.add_argument("--show-sbatch", default=None, metavar="STAGE", help="print the sbatch script of a stage")
    return ap.parse_args(argv)


def resolve_account(args, cluster: ClusterProfile) -> str | None:
    import os

    account = args.account or os.environ.get("SLURM_ACCOUNT")
    user_cfg = Path.home() / ".config" / "takd.yaml"
    if not account and user_cfg.is_file():
        account = (cfglib.read_yaml(user_cfg) or {}).get("account")
    if cluster.account_required and not account:
        raise ConfigError(f"cluster {cluster.name} needs a Slurm account: pass --account def-yourpi (or set "
                          "SLURM_ACCOUNT, or `account:` in ~/.config/takd.yaml)")
    return account


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
    tas = [t.strip() for t in args.ta.split("|")] if args.ta else None
    if tas and len(chain) != 2:
        raise ConfigError("--ta expects --chain teacher,student (the TA comes from --ta)")
    validate_chain(chain)
    profile_path = Path(args.profile) if args.profile else default_profile(chain)
    profile = cfglib.load(ChainProfile, profile_path)
    cluster = load_cluster(args.cluster or "local")
    account = resolve_account(args, cluster)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    run_dir = Path(args.run_dir) if args.run_dir else runs_root() / f"{'-'.join(chain)}-{stamp}"
    if args.submit and (run_dir / "plan.yaml").exists():
        raise ConfigError(f"run directory {run_dir} already holds a run; use --resume {run_dir} to continue it, "
                          "or pick another --run-dir")
    baselines = tuple(b for b in args.baselines.split(",") if b)
    bad = [b for b in baselines if b not in ("sft", "kd", "seqkd")]
    if bad:
        raise ConfigError(f"unknown baseline {bad[0]!r}; expected sft, kd, seqkd")
    models_used = chain + (tas or [])
    try:
        check_offline(models_used)
    except ConfigError as err:
        if args.submit:
            raise
        print(f"warning: {err}", file=sys.stderr)  # a dry run is still worth reading
    stages = build_plan(chain, run_dir=run_dir.resolve(), profile=profile, method=args.method,
                        direct=not args.no_direct, baselines=baselines, teacher_path=args.teacher_path, tas=tas,
                        overrides=args.overrides, evaluate=not args.no_eval)
    assign_resources(stages, cluster, pinned=tuple(o.split("=", 1)[0].strip() for o in args.overrides))
    meta = {"chain": chain, "tas": tas, "profile": str(profile_path), "cluster": cluster.name, "account": account,
            "executor": args.executor, "git": git_revision(),
            "created": dt.datetime.now().isoformat(timespec="seconds")}
    return run_dir.resolve(), stages, meta


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        run_dir, stages, meta = prepare_run(args)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.show_sbatch:
        from takd.launch import sbatch_script

        print(sbatch_script(run_dir, stages, meta, args.show_sbatch))
        return 0
    print(plan_table(stages))
    if not (args.submit or args.resume):
        print(f"\n{len(stages)} stages. Nothing written; add --submit to create {run_dir} and submit.")
        return 0
    if not args.resume:
        write_plan(run_dir, stages, meta)
    from takd.launch import launch

    return launch(run_dir, stages, meta, executor=args.executor, wait=args.wait)


if __name__ == "__main__":
    sys.exit(main())
