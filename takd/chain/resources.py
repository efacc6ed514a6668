"""Per-GPU memory estimate for a stage, and the smallest allocation that fits (used by the planner's table).

Bytes per student parameter under mixed-precision AdamW (16 B/param of model states: 2 weights, 2 grads,
12 fp32 master + moments), partitioned over N data-parallel GPUs:
    ZeRO-1: 4 + 12/N      ZeRO-2: 2 + 14/N      ZeRO-3: 16/N
Teacher (bf16, frozen): 2 B/param replicated, 2/N under ZeRO-3. A ZeRO-3 student gathered whole for generation
(`gather_for_generation`, one all-gather per rollout batch instead of one per layer per token) adds its 2 B/param
of bf16 weights while it generates. Working memory (logits over the vocabulary,
activations with checkpointing, KV caches for rollouts) is a flat allowance per GPU. These reproduce the
arithmetic in shared/docs/clusters-submitit-deepspeed.md §E (e.g. OPT-6.7B ZeRO-2 on 4 GPUs: 36.6 GB).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

WORKING_GB = 6.0  # per GPU: logits, activations, rollout KV caches (rough, conservative)
GB = 1e9


def student_bytes_per_param(zero_stage: int, n_gpus: int) -> float:
    return {1: 4 + 12 / n_gpus, 2: 2 + 14 / n_gpus, 3: 16 / n_gpus}[zero_stage]


def teacher_bytes_per_param(placement: str, n_gpus: int) -> float:
    return 2.0 if placement == "replicated" else 2.0 / n_gpus


@dataclass
class Allocation:
    nodes: int
    gpus_per_node: int
    zero_stage: int
    teacher_placement: str
    mem_per_gpu_gb: float
    gather_for_generation: bool = False

    @property
    def gpus(self) -> int:
        return self.nodes * self.gpus_per_node


def per_gpu_gb(student_params_m: float, teacher_params_m: float, zero_stage: int, placement: str,
               n_gpus: int, gather_for_generation: bool = False) -> float:
    per_param = student_bytes_per_param(zero_stage, n_gpus) + (2.0 if gather_for_generation and zero_stage == 3 else 0)
    s = student_params_m * 1e6 * per_param
    t = teacher_params_m * 1e6 * teacher_bytes_per_param(placement, n_gpus) if teacher_params_m else 0.0
    return (s + t) / GB + WORKING_GB


OPTIONS = [(1, "replicated", False), (2, "replicated", False), (3, "replicated", True), (3, "replicated", False),
           (3, "zero3", True), (3, "zero3", False)]  # (zero stage, teacher placement, gathered for generation)


def _allowed(option: tuple[int, str, bool], fixed: dict[str, Any]) -> bool:
    zero, placement, gather = option
    return (fixed.get("zero_stage", zero) == zero and fixed.get("teacher_placement", placement) == placement
            and (zero != 3 or fixed.get("gather_for_generation", gather) == gather))


def choose_allocation(student_params_m: float, teacher_params_m: float, gpu_mem_gb: float, gpus_per_node: int,
                      max_nodes: int = 4, headroom: float = 0.9, fixed: dict[str, Any] | None = None
                      ) -> Allocation | None:
    """The fewest GPUs, then the least sharding (ZeRO-1 < 2 < 3, replicated teacher < ZeRO-3 teacher), whose
    estimate fits in headroom × GPU memory: fewer GPUs cost fewer GPU-hours; less sharding communicates less.
    A ZeRO-3 student is gathered whole for generation when that still fits (much faster decoding). A sharded
    teacher only pays off with a sharded student. fixed: `deepspeed.*` values the choice must keep (zero_stage,
    teacher_placement, gather_for_generation); None when nothing with them fits."""
    counts = [c for c in (1, 2, 4, 8) if c <= gpus_per_node] + [gpus_per_node * n for n in range(2, max_nodes + 1)]
    options = [o for o in OPTIONS if _allowed(o, fixed or {})]
    for n in counts:
        for zero, placement, gather in options:
            gb = per_gpu_gb(student_params_m, teacher_params_m, zero, placement, n, gather)
            if gb <= headroom * gpu_mem_gb:
                nodes = max(1, n // gpus_per_node)
                return Allocation(nodes, min(n, gpus_per_node), zero, placement, gb, gather)
    return None
