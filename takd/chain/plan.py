"""The stage DAG of a teacher-assistant chain, typed: each planned stage carries its training or evaluation config.

The chain T → A … → S becomes:
  sft-T                 teacher SFT (or `--teacher-path` to start from an already fine-tuned teacher)
  init-X                SFT init of every assistant and of the student (lowest validation loss kept)
  <method>-T-to-A, …    distillation along the chain; each stage's teacher is the previous stage's final HF dir
  <method>-T-to-S       the direct baseline (on by default; --no-direct to skip)
  baseline-<m>-S        optional baselines (--baselines sft,kd,seqkd), from the student's base model
  eval-…                evaluation of the teacher, the student's init, every distilled model and every baseline
A run directory holds `plan.yaml` (the DAG: names, roles, dependencies, resources, what the planner decided) and
one `stages/<stage>/stage.yaml` per stage: the resolved config that `takd.train --config` / `takd.evaluate
--config` read as it is.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import yaml

from takd import config as cfglib
from takd.chain.profiles import ChainProfile, profile_stage
from takd.config import ConfigError
from takd.data.rows import missing_splits
from takd.evaluate.config import EvalJob, EvalSettings
from takd.models import registry
from takd.models.snapshots import snapshot_problems
from takd.paths import final_dir, stage_dir
from takd.train.config import StageConfig, load_stage, stage_class

METHODS = ("minillm", "kd", "seqkd", "sft")
Role = Literal["sft", "init", "distill", "baseline", "eval"]


@dataclass
class PlannedStage:
    name: str
    role: Role
    model: str  # registry name of the model trained (or evaluated)
    depends_on: list[str]
    config: StageConfig | EvalJob  # what the stage runs: its stage.yaml
    label: str = ""  # teacher | ta | via-ta | direct | baseline-<m> | init
    teacher_model: str = ""  # registry name of the teacher's model (its architecture/size), for the memory estimate
    nodes: int = 1
    gpus_per_node: int = 0
    time_min: int = 60
    mem_per_gpu_gb: float = 0.0
    working_gb: float = 0.0  # of mem_per_gpu_gb: activations, logits, KV caches, overhead (resources.working_gb)
    est_hours: float = 0.0  # estimated run time (takd.chain.timing); 0 without a GPU profile to estimate from
    jobs: int = 1  # Slurm jobs it needs at the partition's time limit (requeued after a checkpoint)
    checkpointing: bool = False  # the student's activations are recomputed in the backward pass
    pinned: dict[str, str] = field(default_factory=dict)  # deepspeed.<key> -> "profile" | "--set"
    notes: list[str] = field(default_factory=list)  # what the planner decided against a stated setting, and why

    @property
    def kind(self) -> Literal["train", "eval"]:
        return "eval" if self.role == "eval" else "train"

    @property
    def engine(self) -> bool:
        return self.kind == "train" and self.config.deepspeed.enabled


# ------------------------------------------------------------------------------------------------ checks
def validate_chain(chain: list[str]) -> list[registry.ModelSpec]:
    """Every check that can fail before anything is written or submitted, each a one-line ConfigError."""
    if len(chain) < 2:
        raise ConfigError(f"a chain needs at least a teacher and a student (got {chain}); e.g. "
                          "--chain opt-13b,opt-6.7b,opt-1.3b")
    dupes = sorted({m for m in chain if chain.count(m) > 1})
    if dupes:
        raise ConfigError(f"model {dupes[0]!r} appears twice in the chain {','.join(chain)}")
    specs = [registry.resolve(m) for m in chain]
    for big, small in zip(specs, specs[1:], strict=False):
        if big.params_m and small.params_m and small.params_m >= big.params_m:
            raise ConfigError(f"{small.name} ({small.params_m:g}M params) is not smaller than its teacher {big.name} "
                              f"({big.params_m:g}M); order the chain from the largest model to the smallest")
    for a, b in zip(specs, specs[1:], strict=False):
        problem = registry.tokenizer_problem(a, b)
        if problem:
            raise ConfigError(f"{problem}; token-level distillation needs one vocabulary: use models of one family")
    return specs


def stage_models(st: PlannedStage) -> list[str]:
    """The models a stage runs: its own, and a training stage's teacher."""
    return [st.model] + ([st.teacher_model] if st.kind == "train" and st.teacher_model else [])


def check_positions(stages: list[PlannedStage]) -> None:
    """Prompt + response tokens must fit every model a stage runs: one line naming the stage and the limit."""
    for st in stages:
        cfg = st.config
        for m in stage_models(st):
            limit = registry.max_positions(m)
            need = cfg.max_prompt_tokens + cfg.max_new_tokens
            if limit is not None and need > limit:
                raise ConfigError(f"stage {st.name}: max_prompt_tokens + max_new_tokens = {need} tokens, but {m} "
                                  f"attends over at most {limit}; lower them (--set max_new_tokens=...)")


def check_prompt_formats(stages: list[PlannedStage]) -> None:
    """prompt_format chat needs each model's tokenizer to carry a chat template; checked here for tokenizers on
    this machine (the stage checks again when it loads one)."""
    from takd.models.vocabulary import has_chat_template

    for st in [x for x in stages if x.config.prompt_format == "chat"]:
        for m in stage_models(st):
            files = registry.tokenizer_files(registry.resolve(m))
            if files is not None and not has_chat_template(files):
                raise ConfigError(f"stage {st.name}: prompt_format chat, but the tokenizer of {m} has no chat "
                                  "template; use prompt_format: alpaca (the reference's template)")


def check_trackers(stages: list[PlannedStage]) -> None:
    """A stage that logs to W&B (offline) needs the optional wandb package where jobs run: said before submitting."""
    from takd.train.trackers import wandb_available

    asking = [st.name for st in stages if st.kind == "train" and st.config.wandb]
    if asking and not wandb_available():
        raise ConfigError(f"stage {asking[0]} logs to W&B (wandb: true) but the wandb package is not installed: "
                          "pip install wandb (or pip install takd[wandb]), or set wandb: false")


def check_teacher_path(path: str, student: str) -> None:
    """--teacher-path: a complete model directory, with the chain's vocabulary, larger than the student."""
    d = Path(path)
    if not d.is_dir():
        raise ConfigError(f"--teacher-path {path}: no such directory (an HF directory of the fine-tuned teacher)")
    problems = snapshot_problems(d)
    if problems:
        raise ConfigError(f"--teacher-path {path} is not a complete model directory (missing: {'; '.join(problems)})")
    spec, teacher = registry.resolve(student), registry.resolve(str(d))
    if teacher.params_m and spec.params_m and teacher.params_m <= spec.params_m:
        raise ConfigError(f"--teacher-path {path} (~{teacher.params_m:,.0f}M parameters) is not larger than the "
                          f"student {student} ({spec.params_m:,.0f}M)")
    problem = registry.tokenizer_problem(teacher, spec)
    if problem:
        raise ConfigError(f"--teacher-path: {problem}; token-level distillation needs one vocabulary")


def check_offline(models: list[str], datasets: dict[str, tuple[str, ...]] | None = None) -> None:
    """Jobs run offline: every model must be complete in the local cache (config, weights, tokenizer) and every
    dataset split the stages read must be prepared. One ConfigError naming what is missing and the command."""
    missing = {m: p for m in models if (p := registry.offline_problems(m))}
    gaps = [m if p == ["everything (not in the HF cache)"] else f"{m} (missing: {'; '.join(p)})"
            for m, p in missing.items()]
    lacking = {d: m for d, splits in (datasets or {}).items() if (m := missing_splits(d, splits))}
    gaps += [f"dataset {d} ({', '.join(m)})" for d, m in lacking.items()]
    if gaps:
        raise ConfigError(f"not in the local cache (jobs run offline): {', '.join(gaps)}; on a login node run: "
                          f"{registry.prepare_command(list(missing), list(lacking))}")


# ------------------------------------------------------------------------------------------------ planning
PLAN_KEYS = ("name", "method", "student", "teacher", "dataset", "output_dir")  # the planner sets these per stage


def slug(model: str) -> str:
    """A model's part of a stage name: a registry name as it is (a released checkpoint: the model it fine-tunes), a
    hub id's org--name, a directory's name; only letters, digits, '.', '_' and '-' (stage names name directories and
    Slurm jobs)."""
    base = registry.registry().get(model)
    if base is not None and base.base:
        model = base.base
    name = Path(model).name if Path(model).is_dir() else model.replace("/", "--")
    return re.sub(r"[^A-Za-z0-9._-]", "-", name).lstrip("-._") or "model"


class _Overrides:
    """`--set key=value` items: each applies to the stages that have its key; one no stage has is an error."""

    def __init__(self, items: list[str]):
        self.items = [(text, cfglib.parse_override(text)[0]) for text in items]
        self.used: set[str] = set()
        owned = [text for text, keys in self.items if keys[0] in PLAN_KEYS]
        if owned:
            raise ConfigError(f"--set {owned[0]}: the planner sets {owned[0].split('=')[0].split('.')[0]} for each "
                              "stage; use --chain, --method, --profile (dataset) or --run-dir instead")

    def select(self, method: str) -> tuple[list[str], dict[str, str]]:
        """The items a stage of `method` has, and the `deepspeed.*` keys they pin."""
        fields = set(stage_class(method).__dataclass_fields__)
        mine = [(text, keys) for text, keys in self.items if keys[0] in fields]
        self.used.update(text for text, _ in mine)
        return [text for text, _ in mine], {".".join(keys): "--set" for _, keys in mine
                                            if keys[0] in ("deepspeed", "micro_batch_size")}

    def check_all_used(self) -> None:
        unused = [text for text, _ in self.items if text not in self.used]
        if unused:
            raise ConfigError(f"--set {unused[0]}: no stage of this plan has that key")


def build_plan(chain: list[str], *, run_dir: Path, profile: ChainProfile, method: str | None = None,
               direct: bool = True, baselines: tuple[str, ...] = (), teacher_path: str | None = None,
               tas: list[str] | None = None, overrides: list[str] | None = None, evaluate: bool = True,
               train_seeds: list[int] | None = None) -> list[PlannedStage]:
    """The stage DAG (topologically ordered) for one chain, or one chain per TA when `tas` is given. With several
    `train_seeds` the distillation and baseline stages are planned once per training seed (`<stage>-seed<k>`, from
    the same teacher and inits); the report pools the replicates."""
    method = method or profile.method
    if method not in METHODS:
        raise ConfigError(f"unknown method {method!r}; expected one of {', '.join(METHODS)}")
    chains = [[chain[0], ta, chain[-1]] for ta in tas] if tas else [chain]
    sets = _Overrides(overrides or [])
    stages: dict[str, PlannedStage] = {}
    init_teacher: dict[str, str] = {}  # init stage -> the chain's teacher (stage or --teacher-path)
    given: dict[str, tuple[str, str]] = {}  # models evaluated but not trained here -> (label, eval stage)
    chain_teacher: dict[str, str] = {}  # student -> the chain's teacher (stage or model)
    seeds: list[int | None] = list(train_seeds or [None])
    replicate: dict[str, int] = {}  # stage -> its training seed, when several are planned

    def train(role, meth, name, model, student_init, teacher_stage_or_path, deps, label, seed=None):
        if seed is not None and len(seeds) > 1:
            name += f"-seed{seed}"
            replicate[name] = seed
        if name in stages:
            return
        if teacher_stage_or_path in stages:  # a stage of this plan: its final/ directory, its model's size
            teacher = str(final_dir(run_dir, teacher_stage_or_path))
            teacher_model = stages[teacher_stage_or_path].model
        else:  # a registry name or an already fine-tuned HF directory (--teacher-path)
            teacher = teacher_stage_or_path
            teacher_model = registry.base_model_name(teacher) if teacher else ""
        init = str(final_dir(run_dir, student_init)) if student_init in stages else student_init
        texts, pins = sets.select(meth)
        texts = texts + ([f"seed={seed}"] if seed is not None else [])
        pins = {**{f"deepspeed.{k}": "profile" for k in profile.section(role, model).get("deepspeed", {})}, **pins}
        cfg = profile_stage(profile, role, meth, model, texts, name=name, student=init, teacher=teacher,
                            output_dir=str(stage_dir(run_dir, name)))  # validated now, before anything is submitted
        stages[name] = PlannedStage(name, role, model, deps, cfg, label, teacher_model=teacher_model, pinned=pins)

    def distil(ch, specs, teacher_stage, seed):
        """The chain's distillation stages from its teacher (and its baselines), for one training seed."""
        t, s = ch[0], ch[-1]
        prev = teacher_stage
        suffix = f"-seed{seed}" if seed is not None and len(seeds) > 1 else ""
        for i, (m, spec) in enumerate(zip(ch[1:], specs[1:], strict=True), start=1):
            if spec.role not in ("", "init"):  # a released finished model as an assistant: it teaches as it is
                if i == len(ch) - 1:
                    raise ConfigError(f"{m} is already a finished {spec.role} model; as the student give its init "
                                      f"({_release_hint(spec.base, 'init')}) or {spec.base}")
                prev = m
                given[m] = ("ta", f"eval-ta-{slug(m)}")
                continue
            init = _init_of(m, spec)
            label = "ta" if i < len(ch) - 1 else ("via-ta" if len(ch) > 2 else "direct")
            name = f"{method}-{slug(ch[i - 1])}-to-{slug(m)}"
            train("distill", method, name, m, init, prev, [d for d in (prev, init) if d in stages], label, seed)
            prev = name + suffix
        s_init = _init_of(s, specs[-1])
        if direct and len(ch) > 2:
            train("distill", method, f"{method}-{slug(t)}-to-{slug(s)}", s, s_init, teacher_stage,
                  [d for d in (teacher_stage, s_init) if d in stages], "direct", seed)
        for b in baselines:  # from the student's base model, as the paper's baselines are
            deps = [teacher_stage] if b != "sft" and teacher_stage in stages else []
            base = specs[-1].base or s
            train("baseline", b, f"baseline-{b}-{slug(s)}", base, base, None if b == "sft" else teacher_stage, deps,
                  f"baseline-{b}", seed)

    for ch in chains:
        specs = validate_chain(ch)
        t, s = ch[0], ch[-1]
        # a released checkpoint (the authors') is used as it is: no SFT stage for a released teacher or init
        ready_teacher = teacher_path or (t if specs[0].role else None)
        teacher_stage = ready_teacher or f"sft-{slug(t)}"
        if not ready_teacher:
            train("sft", "sft", f"sft-{slug(t)}", t, t, None, [], "teacher")
        for m, spec in zip(ch[1:], specs[1:], strict=True):
            if not spec.role:
                train("init", "sft", f"init-{slug(m)}", m, m, None, [], "init")
            init_teacher.setdefault(_init_of(m, spec), teacher_stage)  # what its evaluation compares it with
        for seed in seeds:
            distil(ch, specs, teacher_stage, seed)
        if specs[-1].role == "init":
            given[ch[-1]] = ("init", f"eval-init-{slug(ch[-1])}")
        if ready_teacher:
            given[ready_teacher] = ("teacher", "eval-teacher")
        chain_teacher[s] = teacher_stage
    sets.check_all_used()
    for stage in stages.values():
        if stage.kind == "train" and stage.config.method == "minillm" and stage.config.minillm.pt_loss != "none":
            stage.config.pt_dataset = _corpus_or_auto(stage.config.pt_dataset, stage.model)
    students = {ch[-1] for ch in chains}
    for st in [x for x in stages.values() if evaluate]:
        if st.role != "init" or st.model in students:  # the student's SFT init shows what distillation adds
            ev = _eval_stage(st, profile.eval, run_dir, init_teacher.get(st.name), stages, replicate.get(st.name))
            stages[ev.name] = ev
    trained = next((x for x in stages.values() if x.kind == "train"), None)
    fmt = trained.config.prompt_format if trained else profile.eval.prompt_format  # one format per chain
    for model, (label, name) in given.items() if evaluate else ():
        teacher = chain_teacher.get(model) if label == "init" else None
        stages[name] = _given_eval(model, name, label, profile.eval, run_dir, fmt, teacher, stages)
    return list(stages.values())


def _init_of(model: str, spec: registry.ModelSpec) -> str:
    """A chain member's starting point: a released init as it is, else its SFT init stage."""
    return model if spec.role == "init" else f"init-{slug(model)}"


def _release_hint(base: str, role: str) -> str:
    rel = registry.released_for(base, role)
    return rel.name if rel else f"no released {role} of {base}"


def _corpus_or_auto(value: str | None, student: str) -> str:
    """The PT corpus resolved now when it is on this machine (stage.yaml then names it); else left `auto`, which
    `check_corpora` reports and the stage resolves again when it starts."""
    from takd.models.corpora import AUTO, resolve_corpus

    try:
        return resolve_corpus(value, student)
    except ConfigError:
        return value or AUTO


def check_corpora(stages: list[PlannedStage]) -> None:
    """Every MiniLLM stage with a PT loss has its corpus: one line naming the stage and the prepare command."""
    from takd.models.corpora import corpus_problem

    for st in stages:
        cfg = st.config
        if st.kind == "train" and cfg.method == "minillm" and cfg.minillm.pt_loss != "none":
            problem = corpus_problem(cfg.pt_dataset, st.model)
            if problem:
                raise ConfigError(f"stage {st.name}: {problem}")


def substitute_released(chain: list[str]) -> tuple[list[str], list[str]]:
    """`--released`: the authors' released teacher for the chain's teacher and released inits for the others, where
    they published one; with a note per substitution."""
    out, notes = [], []
    for i, m in enumerate(chain):
        rel = registry.released_for(m, "teacher" if i == 0 else "init")
        out.append(rel.name if rel else m)
        if rel:
            notes.append(f"{m}: the authors' {rel.hf_id} ({rel.role}) instead of "
                         f"{'the teacher SFT stage' if i == 0 else 'an init SFT stage'}")
    return out, notes


def _given_eval(model: str, name: str, label: str, settings: EvalSettings, run_dir: Path, prompt_format: str,
                teacher_stage: str | None, stages: dict[str, PlannedStage]) -> PlannedStage:
    """The evaluation of a model the plan does not train (a given or released teacher, a released init or TA)."""
    teacher = deps = None
    if teacher_stage:
        teacher = str(final_dir(run_dir, teacher_stage)) if teacher_stage in stages else teacher_stage
        deps = [teacher_stage] if teacher_stage in stages else None
    method = registry.resolve(model).role if not Path(model).is_dir() else "given"
    job = _eval_job(settings, model, stage_dir(run_dir, name), teacher, prompt_format,
                    {"stage": name.removeprefix("eval-"), "model": model, "method": method or "given", "label": label,
                     "teacher": teacher or ""})
    return PlannedStage(name, "eval", model, deps or [], job, label)


def _eval_stage(st: PlannedStage, settings: EvalSettings, run_dir: Path, chain_teacher: str | None,
                stages: dict[str, PlannedStage], train_seed: int | None = None) -> PlannedStage:
    """A trained stage's evaluation, against its own teacher (exposure bias, reverse KL); a student's SFT init is
    compared with the chain's teacher, so that the report shows what distillation changed."""
    name = f"eval-{st.name}"
    deps = [st.name]
    teacher = st.config.teacher or ""
    if not teacher and chain_teacher:
        teacher = str(final_dir(run_dir, chain_teacher)) if chain_teacher in stages else chain_teacher
        deps += [chain_teacher] if chain_teacher in stages else []
    # evaluated against its own teacher, in the prompt format it was trained with
    job = _eval_job(settings, str(final_dir(run_dir, st.name)), stage_dir(run_dir, name), teacher or None,
                    st.config.prompt_format,
                    {"stage": st.name, "model": st.model, "method": st.config.method, "label": st.label,
                     "teacher": teacher, **({"train_seed": str(train_seed)} if train_seed is not None else {})})
    return PlannedStage(name, "eval", st.model, deps, job, st.label)


def _eval_job(settings: EvalSettings, model: str, output_dir: Path, teacher: str | None, prompt_format: str,
              meta: dict[str, str]) -> EvalJob:
    """The plan's evaluation settings for one model; exposure bias needs a teacher to compare with."""
    return EvalJob(**{**asdict(settings), "exposure_bias": settings.exposure_bias and bool(teacher),
                      "prompt_format": prompt_format}, model=model, output_dir=str(output_dir), teacher=teacher,
                   meta=meta)


# ------------------------------------------------------------------------------------------------ display
def plan_table(stages: list[PlannedStage], rgu_per_gpu: float = 0.0) -> str:
    """One line per stage: models, dependencies, GPUs and ZeRO choice, memory per GPU, estimated hours, the time
    limit asked, GPU-hours (the estimate's, else the limit's); totals with the cluster's RGU-hours."""
    head = f"{'stage':34s} {'method':8s} {'teacher':22s} {'student':22s} {'after':30s} {'GPUs':>6s} " \
           f"{'ZeRO':>6s} {'GB/GPU':>7s} {'est.':>6s} {'limit':>6s} {'GPU-h':>6s}"
    lines = [head, "-" * len(head)]
    total = 0.0
    for st in stages:
        train = st.kind == "train"
        teacher = _short(st.config.teacher or "") if train else ""
        student = _short(st.config.student if train else st.config.model)
        gpus = f"{st.nodes}x{st.gpus_per_node}" if st.gpus_per_node else "cpu"
        gpuh = st.nodes * st.gpus_per_node * (st.est_hours or st.time_min / 60)
        total += gpuh
        est = f"{st.est_hours:5.1f}h" if st.est_hours else "-"
        limit = f"{st.time_min / 60:4.1f}h" + (f"x{st.jobs}" if st.jobs > 1 else "")
        method = st.config.method if train else "eval"
        lines.append(f"{st.name:34s} {method:8s} {teacher:22s} {student:22s} {','.join(st.depends_on)[:30]:30s} "
                     f"{gpus:>6s} {_zero_label(st):>6s} {st.mem_per_gpu_gb:7.1f} {est:>6s} {limit:>6s} {gpuh:6.0f}")
    lines.append("ZeRO: the student's stage (3g: gathered whole for generation); +T3: teacher sharded by ZeRO-3 too; "
                 "+off: optimizer in host memory; est.: estimated run time (takd/chain/timing.py); limit: the time "
                 "asked (x N: as N requeued jobs)")
    if any(st.gpus_per_node for st in stages):
        rgu = f", {total * rgu_per_gpu:,.0f} RGU-hours at {rgu_per_gpu:g} RGU per GPU-hour (compare with " \
              "`sshare -l -A <account>`)" if rgu_per_gpu else ""
        lines.append(f"total: {total:,.0f} GPU-hours{rgu}")
    lines += [f"note: {n}" for st in stages for n in st.notes]
    return "\n".join(lines)


def _zero_label(st: PlannedStage) -> str:
    if not st.engine:
        return "-"
    ds = st.config.deepspeed
    gathered = ds.zero_stage == 3 and ds.gather_for_generation
    return (f"{ds.zero_stage}{'g' if gathered else ''}{'+off' if ds.offload_optimizer else ''}"
            f"{'+T3' if ds.teacher_placement == 'zero3' and st.config.teacher else ''}")


def _short(path: str) -> str:
    p = Path(path)
    return p.parent.name if p.name == "final" else path


# ------------------------------------------------------------------------------------------------ files
def _entry(st: PlannedStage) -> dict:
    """A stage's line in plan.yaml: everything but its config (which is its stage.yaml)."""
    return {"kind": st.kind, **{k: v for k, v in cfglib.to_dict(st).items() if k != "config"}}


def write_plan(run_dir: Path, stages: list[PlannedStage], meta: dict) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    for st in stages:
        d = stage_dir(run_dir, st.name)
        d.mkdir(parents=True, exist_ok=True)
        (d / "stage.yaml").write_text(yaml.safe_dump(cfglib.to_dict(st.config), sort_keys=False))
    manifest = {**meta, "run_dir": str(run_dir.resolve()), "stages": [_entry(s) for s in stages]}
    (run_dir / "plan.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False))
    return run_dir / "plan.yaml"


def load_stage_config(stage_yaml: Path, kind: str) -> StageConfig | EvalJob:
    if kind == "eval":
        return cfglib.load(EvalJob, stage_yaml)
    return load_stage(stage_yaml)


def read_plan(run_dir: Path) -> tuple[dict, list[PlannedStage]]:
    """A written plan, its stage configs read from their stage.yaml. A run directory that was moved is relocated
    first: every path inside the old location is rewritten to the new one (said in one line), so that a resume
    writes where the run now is."""
    manifest = cfglib.read_yaml(run_dir / "plan.yaml")
    if not isinstance(manifest.get("stages"), list):
        raise ConfigError(f"{run_dir}/plan.yaml is not a takd plan (no stages)")
    old = manifest.get("run_dir")
    if old and Path(old) != run_dir.resolve():
        relocate(run_dir, Path(old), manifest)
    stages = []
    for entry in manifest.pop("stages"):
        entry = dict(entry)
        kind = entry.pop("kind")
        entry["config"] = load_stage_config(stage_dir(run_dir, entry["name"]) / "stage.yaml", kind)
        stages.append(cfglib.from_dict(PlannedStage, entry, f"{run_dir}/plan.yaml"))
    return manifest, stages


def relocate(run_dir: Path, old: Path, manifest: dict) -> None:
    """Rewrite the paths of a moved run: every stage.yaml, and plan.yaml's record of where the run lives."""
    new = run_dir.resolve()

    def moved(value):
        if isinstance(value, str) and (value == str(old) or value.startswith(str(old) + "/")):
            return str(new) + value[len(str(old)):]
        if isinstance(value, dict):
            return {k: moved(v) for k, v in value.items()}
        if isinstance(value, list):
            return [moved(v) for v in value]
        return value

    for entry in manifest["stages"]:
        f = stage_dir(run_dir, entry["name"]) / "stage.yaml"
        f.write_text(yaml.safe_dump(moved(cfglib.read_yaml(f)), sort_keys=False))
    manifest["run_dir"] = str(new)
    (run_dir / "plan.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False))
    print(f"note: the run moved from {old} to {new}: its stage paths now point there")
