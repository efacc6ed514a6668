"""Per-GPU memory estimate for a stage, and the smallest allocation that fits (used by the planner's table).

Model states, as DeepSpeed's own estimators count them (`estimate_zero2_model_states_mem_needs`,
`estimate_zero3_model_states_mem_needs`, without offload; tests/test_plan.py checks the equality). Bytes per
student parameter under mixed-precision AdamW: 2 half-precision weights, 2 half-precision gradients and 16 of fp32
state (4 gradient, 4 master weight, 8 Adam moments), partitioned over N data-parallel GPUs:
    ZeRO-1: 4 + 16/N      ZeRO-2: 2 + 18/N      ZeRO-3: 18/N + 4 B per parameter of the largest layer
    ZeRO-3 with the optimizer offloaded to the CPU: 2/N + 4 B per parameter of the largest layer
The largest layer (the embedding, for every registry model) is gathered whole while it runs. Teacher (bf16,
frozen): 2 B/param replicated, 2/N + 2 B per parameter of its largest layer under ZeRO-3. A ZeRO-3 student
gathered whole for generation (`gather_for_generation`, one all-gather per rollout batch instead of one per layer
per token) adds its 2 B/param of bf16 weights while it generates. DeepSpeed's fp32 gradient partition (4/N) is
what the arithmetic of shared/docs/clusters-submitit-deepspeed.md §E (OPT-6.7B ZeRO-2 on 4 GPUs: 5.5 B/param,
36.6 GB; DeepSpeed: 6.5 B/param, 43.3 GB) leaves out.

Working memory (per GPU, not sharded by ZeRO), from the stage's micro-batch b, sequence length s and the models'
hidden size h, layers L and vocabulary V (`working_gb`):
    activations   34·s·b·h bytes per layer in half precision with SDPA/flash attention (Korthikanti et al. 2022,
                  without the s² score term); with gradient checkpointing only each layer's input (2·s·b·h) is kept,
                  plus one layer's 34·s·b·h while it is recomputed
    logits        per position through the LM head: 14 B/vocabulary entry for the student (bf16 logits, their fp32
                  log-softmax, its gradient) and 10 B for a teacher's (bf16, fp32 upcast, log-softmax)
    KV caches     2·L·b·s·h·2 bytes per model (h: the key-value width under grouped-query attention) for
                  MiniLLM's rollouts (student and teacher, `rollout_batch_size`) and SeqKD's teacher generation;
                  rollouts and the training step are not live at once (the max)
    overhead      2 GB: CUDA context, allocator fragmentation, communication buffers
MiniLLM's step holds the PPO micro-batch (logits on the response positions) and the PT micro-batch (a
`pt_chunk_tokens` chunk) at once. A model the registry has no dimensions for gets a flat 6 GB.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from takd.models.registry import ModelSpec

WORKING_GB = 6.0  # per GPU, when the model's dimensions are unknown
OVERHEAD_GB = 2.0  # per GPU: CUDA context, allocator fragmentation, communication buffers
ACTIVATION_BYTES = 34  # per token, hidden unit and layer, half precision, SDPA attention (Korthikanti et al. 2022)
GB = 1e9
HEADROOM = 0.9  # of a GPU's memory the estimate may fill (the rest: allocator and estimate error)


def teacher_cache_gb(num_rollouts: int, world: int, max_new_tokens: int, vocab: int, dtype: str) -> float:
    """`minillm.teacher_cache` per GPU: every sample a rank owns (⌈rollouts / GPUs⌉) at full response length × V
    logits in the compute dtype (2 B in bf16/fp16, 4 B in float32), alive for the whole round."""
    owned = -(-num_rollouts // world)
    return owned * max_new_tokens * vocab * (4 if dtype == "float32" else 2) / GB


def activations_gb(spec: ModelSpec, batch: int, tokens: int, checkpointing: bool) -> float:
    """What one forward keeps for the backward pass: all layers' activations, or with checkpointing each layer's
    input plus one layer's activations during its recomputation."""
    h, layers = spec.arch["hidden_size"], spec.arch["num_hidden_layers"]
    one_layer = ACTIVATION_BYTES * tokens * batch * h
    kept = (2 * tokens * batch * h * layers + one_layer) if checkpointing else one_layer * layers
    return kept / GB


def logits_gb(spec: ModelSpec, batch: int, positions: int, trained: bool) -> float:
    """The LM head's output over the vocabulary: 14 B/entry with its gradient (student), 10 B without (teacher)."""
    return batch * positions * spec.arch["vocab_size"] * (14 if trained else 10) / GB


def kv_cache_gb(spec: ModelSpec, batch: int, tokens: int) -> float:
    """Keys and values of every layer for `batch` sequences of `tokens`, in half precision (with grouped-query
    attention, `kv_size` = key-value heads × head size per token instead of the hidden size)."""
    width = spec.arch.get("kv_size", spec.arch["hidden_size"])
    return 2 * spec.arch["num_hidden_layers"] * batch * tokens * width * 2 / GB


def has_dims(spec: ModelSpec | None) -> bool:
    return spec is not None and {"hidden_size", "num_hidden_layers", "vocab_size"} <= set(spec.arch)


def working_gb(cfg, student: ModelSpec, teacher: ModelSpec | None, checkpointing: bool) -> float:
    """The working memory of one training process of stage `cfg` (a StageConfig), per the module docstring."""
    if not has_dims(student) or (teacher is not None and not has_dims(teacher)):
        return WORKING_GB
    b, s = cfg.micro_batch_size, cfg.max_prompt_tokens + cfg.max_new_tokens
    if cfg.method == "minillm":
        r, chunk, mc = cfg.max_new_tokens, cfg.minillm.pt_chunk_tokens, cfg.minillm
        step = (activations_gb(student, b, s, checkpointing) + logits_gb(student, b, r, True)
                + (logits_gb(teacher, b, r, False) if mc.single_step else 0.0))
        if mc.pt_loss != "none":
            step += activations_gb(student, b, chunk, checkpointing) + logits_gb(student, b, chunk, True)
            step += logits_gb(teacher, b, chunk, False) if mc.pt_loss == "lm+kd" else 0.0
        rollout = kv_cache_gb(student, mc.rollout_batch_size, s) + kv_cache_gb(teacher, mc.rollout_batch_size, s)
        return OVERHEAD_GB + max(step, rollout)
    step = activations_gb(student, b, s, checkpointing) + logits_gb(student, b, s, True)
    if teacher is not None:
        step += logits_gb(teacher, b, s, False)
    generation = kv_cache_gb(teacher, cfg.seqkd.generation_batch_size, s) if cfg.method == "seqkd" else 0.0
    return OVERHEAD_GB + max(step, generation)


def largest_layer_m(spec: ModelSpec | None) -> float:
    """Millions of parameters of a model's largest single module (ZeRO-3 gathers it whole): its embedding or its
    widest MLP matrix; 0 when the registry has no dimensions for it."""
    if not has_dims(spec):
        return 0.0
    h = spec.arch["hidden_size"]
    return max(spec.arch["vocab_size"] * h, spec.arch.get("intermediate_size", 4 * h) * h) / 1e6


def student_bytes_per_param(zero_stage: int, n_gpus: int, offload_optimizer: bool = False) -> float:
    if zero_stage == 3 and offload_optimizer:
        return 2 / n_gpus
    return {1: 4 + 16 / n_gpus, 2: 2 + 18 / n_gpus, 3: 18 / n_gpus}[zero_stage]


def teacher_bytes_per_param(placement: str, n_gpus: int) -> float:
    return 2.0 if placement == "replicated" else 2.0 / n_gpus


def model_states_gb(params_m: float, layer_m: float, zero_stage: int, n_gpus: int,
                    offload_optimizer: bool = False) -> float:
    """A trained model's states per GPU (module docstring): DeepSpeed's estimate for the same setting."""
    gathered_layer = 4 * layer_m * 1e6 if zero_stage == 3 else 0.0
    return (params_m * 1e6 * student_bytes_per_param(zero_stage, n_gpus, offload_optimizer) + gathered_layer) / GB


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


@dataclass(frozen=True)
class Sizes:
    """What the estimate needs of a stage's models: millions of parameters, and of each one's largest layer."""

    student_m: float
    teacher_m: float = 0.0
    student_layer_m: float = 0.0
    teacher_layer_m: float = 0.0

    @classmethod
    def of(cls, student: ModelSpec, teacher: ModelSpec | None = None) -> Sizes:
        return cls(student.params_m, teacher.params_m if teacher else 0.0, largest_layer_m(student),
                   largest_layer_m(teacher) if teacher else 0.0)


def per_gpu_gb(sizes: Sizes, zero_stage: int, placement: str, n_gpus: int, gather_for_generation: bool = False,
               working: float = WORKING_GB, offload_optimizer: bool = False) -> float:
    s = model_states_gb(sizes.student_m, sizes.student_layer_m, zero_stage, n_gpus, offload_optimizer)
    if gather_for_generation and zero_stage == 3:
        s += 2 * sizes.student_m * 1e6 / GB
    t = sizes.teacher_m * 1e6 * teacher_bytes_per_param(placement, n_gpus) / GB
    if placement != "replicated" and sizes.teacher_m:
        t += 2 * sizes.teacher_layer_m * 1e6 / GB
    return s + t + working


OPTIONS = [(1, "replicated", False), (2, "replicated", False), (3, "replicated", True), (3, "replicated", False),
           (3, "zero3", True), (3, "zero3", False)]  # (zero stage, teacher placement, gathered for generation)


def _allowed(option: tuple[int, str, bool], fixed: dict[str, Any]) -> bool:
    zero, placement, gather = option
    return (fixed.get("zero_stage", zero) == zero and fixed.get("teacher_placement", placement) == placement
            and (zero != 3 or fixed.get("gather_for_generation", gather) == gather)
            and (zero == 3 or not fixed.get("offload_optimizer")))  # DeepSpeed offloads the optimizer under ZeRO-3 here


def allocations(sizes: Sizes, gpu_mem_gb: float, gpus_per_node: int,
                max_nodes: int = 4, headroom: float = HEADROOM, fixed: dict[str, Any] | None = None,
                working: float = WORKING_GB, batch: int | None = None, whole_nodes: bool = False
                ) -> Iterator[Allocation]:
    """Every allocation whose estimate fits in headroom × GPU memory, best first: the fewest GPUs, then the least
    sharding (ZeRO-1 < 2 < 3, replicated teacher < ZeRO-3 teacher); fewer GPUs cost fewer GPU-hours, less
    sharding communicates less. A ZeRO-3 student is gathered whole for generation when that still fits (much faster
    decoding); a sharded teacher only pays off with a sharded student. fixed: `deepspeed.*` values every choice
    keeps (zero_stage, teacher_placement, gather_for_generation, offload_optimizer); working: GB per GPU beyond the
    model states (`working_gb`); batch: only GPU counts that divide it (the global batch is shared equally by the
    processes); whole_nodes: 1 GPU or whole nodes only (Trillium)."""
    counts = [c for c in (1, 2, 4, 8) if c <= gpus_per_node] + [gpus_per_node * n for n in range(2, max_nodes + 1)]
    counts = [c for c in counts if (batch is None or batch % c == 0) and
              (not whole_nodes or c == 1 or c % gpus_per_node == 0)]
    options = [o for o in OPTIONS if _allowed(o, fixed or {})]
    for n in counts:
        for zero, placement, gather in options:
            gb = per_gpu_gb(sizes, zero, placement, n, gather, working, bool(fixed and fixed.get("offload_optimizer")))
            if gb <= headroom * gpu_mem_gb:
                yield Allocation(max(1, n // gpus_per_node), min(n, gpus_per_node), zero, placement, gb, gather)


def choose_allocation(*args: Any, **kwargs: Any) -> Allocation | None:
    """The best allocation that fits (`allocations`), or None."""
    return next(allocations(*args, **kwargs), None)
