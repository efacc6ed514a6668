"""How long a stage runs on a cluster's GPUs (torch-free): the planner's time limits, GPU-hours and RGU-hours.

Stated assumptions (the estimate's error is theirs):
- Training is compute-bound at MFU = 35 % of the GPU's dense bf16 peak: 6·N FLOPs per trained token (8·N with
  gradient checkpointing: the forward runs twice), 2·N per token of a teacher forward; sequences are counted at
  their maximum length (prompt + response tokens: batches are padded to their longest sequence), so the estimate
  leans long.
- Decoding is memory-bound: each generated token reads every weight of every model that decodes (2 B/param) at
  60 % of the GPU's HBM bandwidth; a ZeRO-3 model not gathered for generation also all-gathers its weights for every
  token, over NVLink within a node and over the interconnect (the node's bandwidth shared by its GPUs) across nodes.
- MiniLLM: ⌈steps × batch_size / (num_rollouts × ppo_epochs)⌉ rounds, each decoding num_rollouts / processes prompts
  per process in calls of rollout_batch_size (plus one logging call), and with half-precision compute rescoring
  every rollout with fresh student and teacher forwards; the single-step term's teacher forward runs on every
  PPO micro-batch, or with `minillm.teacher_cache` on `teacher_pass_share` of them; validation samples
  eval_prompts responses every
  eval_every_steps; SeqKD first samples one teacher response per training example.
- A job spends 15 minutes starting, loading and writing its last checkpoint; the time limit asked is the estimate
  × 1.25 + that, clamped to the partition's maximum (a longer stage runs as several jobs, requeued at the limit
  with nothing lost).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

MFU = 0.35  # fraction of dense bf16 peak sustained by training
DECODE_EFFICIENCY = 0.6  # fraction of HBM bandwidth a decode step sustains
MARGIN = 1.25  # time limit = estimate × MARGIN + STARTUP_HOURS
STARTUP_HOURS = 0.25
EVAL_BATCH = 16  # prompts per validation generate call
# training examples when the prepared file cannot be counted (Dolly: 15,011 rows less 1,000 valid and 500 test)
DATASET_EXAMPLES = {"dolly": 13_511, "builtin": 3_000}
EVAL_PROMPTS = {"dolly": 500, "selfinst": 252, "vicuna": 80, "sni": 9_000, "unni": 10_000, "builtin": 200}


@dataclass
class Hardware:
    """One GPU of a cluster, and its links."""

    peak_tflops: float  # dense bf16
    hbm_tb_s: float
    nvlink_gb_s: float  # per GPU, within a node
    internode_gb_s: float  # per node, across nodes
    gpus_per_node: int


@dataclass
class Placement:
    nodes: int
    gpus_per_node: int

    @property
    def world(self) -> int:
        return self.nodes * self.gpus_per_node


def decode_seconds_per_token(params: float, hw: Hardware, place: Placement, sharded: bool) -> float:
    """One generated token of a batch: read the weights from HBM, and all-gather them first when sharded."""
    read = 2 * params / (hw.hbm_tb_s * 1e12 * DECODE_EFFICIENCY)
    if not sharded or place.world == 1:
        return read
    link = hw.nvlink_gb_s if place.nodes == 1 else hw.internode_gb_s / hw.gpus_per_node
    return read + 2 * params * (place.world - 1) / place.world / (link * 1e9)


def teacher_pass_share(ppo_epochs: int, per_rank: int, world: int) -> float:
    """With `minillm.teacher_cache`: the teacher's PPO-pass rows that still run the teacher, as a share of the
    uncached ppo_epochs × rows. A rank keeps the rows it owns; a row runs the teacher unless it is dealt to its owner
    after having been dealt there before. Each rank owns 1/world of a random global micro-batch and takes at most
    per_rank of its own, so a row lands on its owner with probability q = E[min(K, per_rank)] / per_rank,
    K ~ Binomial(per_rank·world, 1/world); pass e then runs it with probability 1 − q·(1 − (1 − q)^(e−1))."""
    p, n = 1.0 / world, per_rank * world
    q = sum(math.comb(n, k) * p ** k * (1 - p) ** (n - k) * min(k, per_rank) for k in range(n + 1)) / per_rank
    return sum(1.0 - q * (1.0 - (1.0 - q) ** e) for e in range(ppo_epochs)) / ppo_epochs


def train_seconds(flops: float, hw: Hardware, place: Placement) -> float:
    return flops / (place.world * hw.peak_tflops * 1e12 * MFU)


def stage_hours(cfg, student_params: float, teacher_params: float, hw: Hardware, place: Placement,
                checkpointing: bool, n_examples: int) -> dict[str, float]:
    """Hours of one training stage by part (train, rollouts, validation, teacher data) and in total."""
    ds = cfg.deepspeed
    s_sharded = ds.enabled and ds.zero_stage == 3 and not ds.gather_for_generation
    t_sharded = ds.enabled and ds.teacher_placement == "zero3"
    seq = cfg.max_prompt_tokens + cfg.max_new_tokens
    per_token = (8 if checkpointing else 6) * student_params
    steps = cfg.max_steps if getattr(cfg, "epochs", None) is None else \
        max(1, math.ceil(cfg.epochs * n_examples / cfg.batch_size))
    parts = {"train": 0.0, "rollouts": 0.0, "validation": 0.0, "teacher_data": 0.0}
    if cfg.method == "minillm":
        mc = cfg.minillm
        pt = cfg.batch_size * mc.pt_chunk_tokens if mc.pt_loss != "none" else 0
        share = teacher_pass_share(mc.ppo_epochs, cfg.micro_batch_size, place.world) if mc.teacher_cache else 1.0
        teacher_rows = cfg.batch_size * seq * share if mc.single_step else 0.0
        flops = per_token * (cfg.batch_size * seq + pt) + 2 * teacher_params * (teacher_rows + pt)
        rounds = math.ceil(steps * cfg.batch_size / (mc.num_rollouts * mc.ppo_epochs))
        if cfg.dtype != "float32" or mc.rescore:  # fresh forwards of both models over every rollout
            flops += 2 * (student_params + teacher_params) * mc.num_rollouts * seq * rounds / steps
        calls = math.ceil(mc.num_rollouts / place.world / mc.rollout_batch_size)
        per_token_s = decode_seconds_per_token(student_params, hw, place, s_sharded) + \
            (decode_seconds_per_token(teacher_params, hw, place, t_sharded) if mc.alpha > 0 else 0.0)
        logging = decode_seconds_per_token(student_params, hw, place, s_sharded) if mc.log_student_rev_kl else 0.0
        parts["rollouts"] = rounds * cfg.max_new_tokens * (calls * per_token_s + logging)
    else:
        flops = per_token * cfg.batch_size * seq + (2 * teacher_params * cfg.batch_size * seq if cfg.teacher else 0)
        if cfg.method == "seqkd":
            calls = math.ceil(n_examples / place.world / cfg.seqkd.generation_batch_size)
            parts["teacher_data"] = calls * cfg.max_new_tokens * decode_seconds_per_token(teacher_params, hw, place,
                                                                                          t_sharded)
    parts["train"] = train_seconds(flops * steps, hw, place)
    evals = (steps // cfg.eval_every_steps + int(cfg.eval_at_start)) if cfg.eval_every_steps else 1
    calls = math.ceil(cfg.eval_prompts / place.world / EVAL_BATCH)
    parts["validation"] = evals * calls * cfg.max_new_tokens * decode_seconds_per_token(student_params, hw, place,
                                                                                         s_sharded)
    hours = {k: v / 3600 for k, v in parts.items()}
    hours["total"] = sum(hours.values())
    return hours


def eval_hours(job, params: float, hw: Hardware) -> float:
    """An evaluation stage on one GPU: every dataset's prompts × seeds, decoded in batches, plus one more pass over
    the first dataset for the reverse KL to the teacher (the teacher's forwards are not counted)."""
    batches = [math.ceil(min(job.max_prompts or EVAL_PROMPTS.get(d, 1_000), EVAL_PROMPTS.get(d, 1_000))
                         / job.batch_size) for d in job.datasets]
    calls = sum(batches) * len(job.seeds) + (batches[0] if job.reverse_kl else 0)
    place = Placement(1, 1)
    return calls * job.max_new_tokens * decode_seconds_per_token(params, hw, place, False) / 3600


def time_limit_minutes(hours: float, max_hours: float) -> int:
    """The time limit to ask for: the estimate with its margin, at least one hour, at most the partition's max."""
    return int(60 * min(max_hours, max(1.0, hours * MARGIN + STARTUP_HOURS)))


def jobs_needed(hours: float, max_hours: float) -> int:
    return max(1, math.ceil((hours * MARGIN + STARTUP_HOURS) / max_hours))
