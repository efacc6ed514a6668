"""Resources for every planned stage on a cluster: nodes × GPUs, ZeRO stage and teacher placement, micro-batch,
memory per GPU, estimated hours and the time limit asked of Slurm.

Memory first (`resources`): the fewest GPUs that fit, then the least sharding. Time second (`timing`): when the
stage would not finish in one job of the partition's maximum, a larger allocation that does is taken (and said);
a stage that needs more than the cluster's requeue budget of jobs is refused before anything is submitted.
Precedence of `deepspeed.*` keys: a value set with --set is kept whatever the estimate says; one the chain profile
set is kept when it fits, and otherwise replaced by the estimate's choice with a note in the plan.
"""

from __future__ import annotations

import dataclasses
import math

from takd.chain.plan import PlannedStage
from takd.chain.profiles import ClusterProfile
from takd.chain.resources import (
    GB,
    HEADROOM,
    OVERHEAD_GB,
    WORKING_GB,
    Allocation,
    Sizes,
    allocations,
    has_dims,
    kv_cache_gb,
    per_gpu_gb,
    teacher_cache_gb,
    working_gb,
)
from takd.chain.timing import (
    DATASET_EXAMPLES,
    Hardware,
    Placement,
    eval_hours,
    jobs_needed,
    stage_hours,
    teacher_pass_share,
    time_limit_minutes,
)
from takd.config import ConfigError
from takd.data.rows import data_dir
from takd.models import registry
from takd.train.config import fitting_micro_batch, uses_gradient_checkpointing

ROLE_HOURS = {"sft": 12, "init": 12, "distill": 24, "baseline": 12, "eval": 2}  # without a GPU profile to estimate
ENGINE_KEYS = ("zero_stage", "teacher_placement", "gather_for_generation")  # what the estimator chooses
PINNABLE_KEYS = (*ENGINE_KEYS, "offload_optimizer")  # what a profile or --set may fix for it


def assign_resources(stages: list[PlannedStage], cluster: ClusterProfile, pinned: tuple[str, ...] = ()) -> None:
    """Every stage's allocation, estimates and time limit (`pinned`: `deepspeed.*` keys held as if --set)."""
    for st in stages:
        st.time_min = int(60 * min(cluster.max_time_hours, ROLE_HOURS[st.role]))
        if cluster.gpus_per_node == 0:  # CPU-only (local test clusters): processes per stage, no estimate
            if st.kind == "train":
                st.config.deepspeed.enabled = st.config.deepspeed.enabled or cluster.cpu_tasks_per_node > 1
                _fit_batch(st, cluster.cpu_tasks_per_node)
            continue
        if st.kind == "eval":
            _assign_eval(st, cluster)
        else:
            _assign_train(st, cluster, {**st.pinned, **{k: "--set" for k in pinned}})


def hardware(cluster: ClusterProfile) -> Hardware | None:
    if not cluster.peak_tflops:
        return None
    return Hardware(cluster.peak_tflops, cluster.hbm_tb_s, cluster.nvlink_gb_s, cluster.internode_gb_s,
                    cluster.gpus_per_node)


def training_examples(dataset: str) -> int:
    """Examples of a prepared training set (its line count), else the table's value."""
    f = data_dir(dataset) / "train.jsonl"
    if f.is_file():
        with open(f) as fh:
            return sum(1 for line in fh if line.strip())
    return DATASET_EXAMPLES.get(dataset, DATASET_EXAMPLES["dolly"])


def _assign_eval(st: PlannedStage, cluster: ClusterProfile) -> None:
    """Inference on one GPU (evaluation runs on rank 0): bf16 weights, 2 B/param, and the generation's KV cache."""
    spec, ev = registry.resolve(st.model), st.config
    working = OVERHEAD_GB + kv_cache_gb(spec, ev.batch_size, ev.max_prompt_tokens + ev.max_new_tokens) \
        if has_dims(spec) else WORKING_GB
    st.nodes, st.gpus_per_node = 1, 1
    st.mem_per_gpu_gb = 2 * spec.params_m * 1e6 / GB + working
    if st.mem_per_gpu_gb > HEADROOM * cluster.gpu_mem_gb:
        raise ConfigError(f"stage {st.name}: evaluating {st.model} needs ~{st.mem_per_gpu_gb:.0f} GB on one GPU, more "
                          f"than {cluster.name}'s {cluster.gpu_mem_gb:g} GB; lower eval.batch_size in a --profile, or "
                          "plan it on a cluster with larger GPUs")
    hw = hardware(cluster)
    if hw is not None and spec.params_m:
        st.est_hours = eval_hours(ev, spec.params_m * 1e6, hw)
        st.time_min = time_limit_minutes(st.est_hours, cluster.max_time_hours)


def _assign_train(st: PlannedStage, cluster: ClusterProfile, pins: dict[str, str]) -> None:
    spec = registry.resolve(st.model)
    teacher = registry.resolve(st.teacher_model) if st.teacher_model else None
    st.checkpointing = uses_gradient_checkpointing(st.config, spec.params_m * 1e6)
    st.config.gradient_checkpointing = st.checkpointing  # stated in stage.yaml, as the estimate assumed it
    st.working_gb = working_gb(st.config, spec, teacher, st.checkpointing)
    alloc, held = _candidates(st, Sizes.of(spec, teacher), cluster, pins)
    _apply(st, alloc, held)
    world = st.nodes * st.gpus_per_node
    _fit_batch(st, world)
    # the estimate of what was chosen, with the micro-batch the stage will really run
    st.working_gb = working_gb(st.config, spec, teacher, st.checkpointing)
    ds = st.config.deepspeed
    st.mem_per_gpu_gb = per_gpu_gb(Sizes.of(spec, teacher), ds.zero_stage if ds.enabled else 1,
                                   ds.teacher_placement if ds.enabled else "replicated", world,
                                   ds.enabled and ds.gather_for_generation, st.working_gb,
                                   ds.enabled and ds.offload_optimizer)
    _teacher_cache(st, cluster, world, teacher)
    hw = hardware(cluster)
    if hw is not None and spec.params_m:
        st.est_hours = _hours(st, alloc, hw, cluster)
        st.time_min = time_limit_minutes(st.est_hours, cluster.max_time_hours)
        st.jobs = jobs_needed(st.est_hours, cluster.max_time_hours)
        if st.jobs > 1:
            st.notes.append(f"{st.name}: ~{st.est_hours:.0f} h, more than one {cluster.max_time_hours:g} h job: it "
                            f"runs as {st.jobs} jobs, each requeued at its time limit after a checkpoint")


def _teacher_cache(st: PlannedStage, cluster: ClusterProfile, world: int, teacher) -> None:
    """MiniLLM: keep the teacher's logits across the PPO passes when they fit beside the chosen allocation (the
    plan says so either way); a value set in the profile or with --set is kept (its memory counted)."""
    cfg = st.config
    vocab = teacher.arch.get("vocab_size") if teacher is not None else None
    if cfg.method != "minillm" or not cfg.minillm.single_step or not cluster.gpus_per_node or not vocab:
        return
    mc = cfg.minillm
    gb = teacher_cache_gb(mc.num_rollouts, world, cfg.max_new_tokens, vocab, cfg.dtype)
    if mc.teacher_cache is None:
        mc.teacher_cache = st.mem_per_gpu_gb + gb <= HEADROOM * cluster.gpu_mem_gb
        share = teacher_pass_share(mc.ppo_epochs, cfg.micro_batch_size, world)
        kept = f"kept across the {mc.ppo_epochs} PPO passes (+{gb:.1f} GB/GPU; the teacher's PPO forwards drop to " \
               f"{share:.0%})" if mc.teacher_cache else f"not kept across the PPO passes ({gb:.1f} GB/GPU does not fit)"
        st.notes.append(f"{st.name}: the teacher's logits are {kept}")
    if mc.teacher_cache:
        st.working_gb += gb
        st.mem_per_gpu_gb += gb


def _candidates(st: PlannedStage, sizes: Sizes, cluster: ClusterProfile,
                pins: dict[str, str]) -> tuple[Allocation, dict[str, dict]]:
    """The allocation to use: the first that fits memory and finishes in one job, else the fitting one that needs
    the fewest jobs (refused beyond the cluster's requeue budget); pins as the module docstring says."""
    cfg = st.config
    ds = cfg.deepspeed
    held = {src: {k: getattr(ds, k) for k in PINNABLE_KEYS if pins.get(f"deepspeed.{k}") == src}
            for src in ("--set", "profile")}
    shared = math.gcd(cfg.batch_size, cfg.minillm.num_rollouts) if cfg.method == "minillm" else cfg.batch_size

    def fitting(fixed):
        return list(allocations(sizes, cluster.gpu_mem_gb, cluster.gpus_per_node, fixed=fixed,
                                working=st.working_gb, batch=shared, whole_nodes=cluster.whole_node_only))

    cands = fitting({**held["--set"], **held["profile"]})
    if not cands and held["profile"]:
        cands = fitting(held["--set"])
        if cands:
            st.notes.append(f"{st.name}: the profile's deepspeed {_kv(held['profile'])} does not fit "
                            f"{cluster.gpus_per_node}x{cluster.gpu_mem_gb:g}GB nodes; the estimate's choice is used")
            held["profile"] = {}
    if not cands and held["--set"]:
        cands = fitting({})
        if cands:
            st.notes.append(f"{st.name}: --set deepspeed {_kv(held['--set'])} kept, although the estimate says it "
                            "does not fit; expect out-of-memory")
    if not cands:
        raise ConfigError(f"stage {st.name}: {st.model} does not fit on {cluster.max_time_hours:g}h nodes of "
                          f"{cluster.gpus_per_node}x{cluster.gpu_mem_gb:g}GB even with ZeRO-3 on 4 nodes")
    hw = hardware(cluster)
    if hw is None or not sizes.student_m:
        return cands[0], held
    jobs = [jobs_needed(_hours(st, c, hw, cluster, held), cluster.max_time_hours) for c in cands]
    best = jobs.index(min(jobs))
    if min(jobs) > cluster.max_jobs:
        raise ConfigError(f"stage {st.name}: ~{_hours(st, cands[best], hw, cluster, held):.0f} h even on "
                          f"{cands[best].gpus} GPUs, more than {cluster.max_jobs} jobs of {cluster.max_time_hours:g} h "
                          f"on {cluster.name}; shorten it (max_steps, epochs) or plan it on another cluster")
    if best:
        st.notes.append(f"{st.name}: {cands[best].gpus} GPUs instead of the {cands[0].gpus} that fit its memory, so "
                        f"that it finishes in {jobs[best]} job(s) of {cluster.max_time_hours:g} h "
                        f"(estimated {_hours(st, cands[0], hw, cluster, held):.0f} h on {cands[0].gpus})")
    return cands[best], held


def _hours(st: PlannedStage, alloc: Allocation, hw: Hardware, cluster: ClusterProfile,
           held: dict[str, dict] | None = None) -> float:
    """Estimated hours of the stage on `alloc` (its config with the allocation's choices applied, a copy)."""
    cfg = dataclasses.replace(st.config, deepspeed=dataclasses.replace(st.config.deepspeed))
    probe = dataclasses.replace(st, config=cfg, notes=[])
    _apply(probe, alloc, held or {"--set": {}, "profile": {}})
    spec = registry.resolve(st.model)
    teacher = registry.resolve(st.teacher_model).params_m * 1e6 if st.teacher_model else 0.0
    hours = stage_hours(cfg, spec.params_m * 1e6, teacher, hw, Placement(probe.nodes, probe.gpus_per_node),
                        st.checkpointing, training_examples(cfg.dataset))
    return hours["total"]


def _apply(st: PlannedStage, alloc: Allocation, held: dict[str, dict]) -> None:
    st.nodes, st.gpus_per_node, st.mem_per_gpu_gb = alloc.nodes, alloc.gpus_per_node, alloc.mem_per_gpu_gb
    ds = st.config.deepspeed
    if st.nodes * st.gpus_per_node > 1 or ds.offload_optimizer:  # offloading needs the DeepSpeed engine
        ds.enabled = True
        chosen = {"zero_stage": alloc.zero_stage, "teacher_placement": alloc.teacher_placement,
                  "gather_for_generation": alloc.gather_for_generation}
        for k, v in chosen.items():
            if k not in held["--set"] and k not in held["profile"]:
                setattr(ds, k, v)


def _fit_batch(st: PlannedStage, world: int) -> None:
    """Keep the stage's global batch on `world` processes: the micro-batch shrinks to a divisor of the per-process
    share when needed (noted), so micro-batch × accumulation × processes = batch_size exactly."""
    cfg = st.config
    micro = fitting_micro_batch(cfg, world)
    if micro is None:
        raise ConfigError(f"stage {st.name}: batch_size={cfg.batch_size} cannot be split over {world} processes; "
                          f"set it to a multiple of {world} (--set batch_size=...)")
    if micro != cfg.micro_batch_size:
        if st.pinned.get("micro_batch_size") == "--set":
            raise ConfigError(f"stage {st.name}: --set micro_batch_size={cfg.micro_batch_size} does not divide the "
                              f"{cfg.batch_size // world} sequences per process of batch_size={cfg.batch_size} on "
                              f"{world} processes; {micro} does")
        st.notes.append(f"{st.name}: micro_batch_size {cfg.micro_batch_size} -> {micro}, so that {world} "
                        f"process(es) keep the global batch of {cfg.batch_size}")
        cfg.micro_batch_size = micro
    if cfg.method == "minillm" and cfg.minillm.num_rollouts % world:
        raise ConfigError(f"stage {st.name}: minillm.num_rollouts={cfg.minillm.num_rollouts} cannot be shared "
                          f"equally by {world} processes; set it to a multiple of {world}")


def _kv(values: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in values.items())
