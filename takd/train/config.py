"""The configuration of one training stage (torch-free), typed per method.

A stage trains one student from its init with one method and writes an HF directory to `<output_dir>/final`.
`StageConfig` holds what every method shares; `SFTStage`, `KDStage`, `SeqKDStage` and `MiniLLMStage` add only
their own sections, so an SFT stage carries no KD or MiniLLM keys. The dataclass defaults are the MiniLLM
reference's values (reference §4, §5), the single source of every default: `python -m takd.train --method minillm
--show-config` prints them. Each number's unit is in its name or comment.

    python -m takd.train --config stage.yaml [key=value ...]
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from takd import config as cfglib
from takd.config import check

Method = Literal["sft", "kd", "seqkd", "minillm"]
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")  # stage names: directory and Slurm job names
Dtype = Literal["float32", "bfloat16", "float16"]
PromptFormat = Literal["alpaca", "chat"]
DIVERGENCES = ("fkl", "rkl", "tvd", "jsd", "skl", "srkl")  # = takd.losses.KINDS (tested); names only, no torch


@dataclass
class OptimConfig:
    """AdamW and its schedule. Defaults: the reference's SFT/KD optimiser (finetune.py, reference §4)."""

    lr: float = 5e-5  # peak learning rate (per model size in the chain profiles: 5e-4 GPT-2 120M ... 1e-5 OPT-13B)
    weight_decay: float = 0.01
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    schedule: Literal["constant", "cosine"] = "cosine"  # after warmup: hold, or cosine-decay to min_lr
    warmup_steps: int = 0  # optimizer steps of linear warmup
    min_lr: float = 1e-7  # floor of the cosine schedule
    grad_clip_norm: float = 1.0  # global L2 norm; 0 disables
    # peak lr of the width-independent parameters (embeddings, biases, norm gains: muP's vector-like group);
    # None: `lr` for every parameter (the reference). The schedule scales both groups alike.
    vector_lr: float | None = None

    def __post_init__(self) -> None:
        check(self.lr > 0, f"optim.lr must be > 0, got {self.lr}")
        check(self.warmup_steps >= 0, f"optim.warmup_steps must be >= 0, got {self.warmup_steps}")
        check(0 <= self.beta1 < 1 and 0 <= self.beta2 < 1, "optim.beta1/beta2 must be in [0, 1)")
        check(self.grad_clip_norm >= 0, "optim.grad_clip_norm must be >= 0 (0 disables clipping)")
        check(self.eps > 0 and self.weight_decay >= 0, "optim.eps must be > 0 and optim.weight_decay >= 0")
        check(0 <= self.min_lr <= self.lr, f"optim.min_lr must be in [0, optim.lr], got {self.min_lr}")
        check(self.vector_lr is None or self.vector_lr > 0,
              f"optim.vector_lr must be > 0 (or null: optim.lr for every parameter), got {self.vector_lr}")


@dataclass
class KDConfig:
    """Word-level KD: (1 − kd_ratio)·CE(gold) + kd_ratio·divergence(teacher, student) (reference §5)."""

    kd_ratio: float = 0.5  # weight of the divergence term, in [0, 1]
    divergence: str = "fkl"  # fkl (reference) | rkl | tvd | jsd | skl | srkl
    beta: float = 0.5  # jsd mixing weight
    lam: float = 0.1  # skl/srkl skew

    def __post_init__(self) -> None:
        check(0.0 <= self.kd_ratio <= 1.0, f"kd.kd_ratio must be in [0, 1], got {self.kd_ratio}")
        check(self.divergence in DIVERGENCES,
              f"kd.divergence must be one of {', '.join(DIVERGENCES)}, got {self.divergence!r}")
        check(0 < self.beta < 1 and 0 < self.lam < 1, "kd.beta and kd.lam must be in (0, 1)")

    def params(self) -> dict[str, float]:
        return {"jsd": {"beta": self.beta}, "skl": {"lam": self.lam}, "srkl": {"lam": self.lam}}.get(
            self.divergence, {})


@dataclass
class SamplingConfig:
    temperature: float = 1.0
    top_k: int = 0  # 0 = no top-k filter (reference)
    top_p: float = 1.0  # 1 = no nucleus filter (reference)

    def __post_init__(self) -> None:
        check(self.temperature > 0, f"temperature must be > 0, got {self.temperature}")
        check(self.top_k >= 0 and 0 < self.top_p <= 1, "top_k must be >= 0 and top_p in (0, 1]")


@dataclass
class SeqKDConfig:
    """SeqKD: the teacher samples one response per training prompt, then the student trains on them.

    `loss: kd` is what the reference's scripts run (word-level KD on teacher outputs, reference §5 caveat 2);
    `loss: sft` is the paper's description (plain SFT on teacher outputs).
    """

    loss: Literal["kd", "sft"] = "kd"
    sampling: SamplingConfig = field(default_factory=SamplingConfig)  # reference: top_k 0, top_p 1, T 1
    generation_batch_size: int = 16  # prompts per teacher generate call

    def __post_init__(self) -> None:
        check(self.generation_batch_size >= 1, "seqkd.generation_batch_size must be >= 1")


@dataclass
class MiniLLMConfig:
    """MiniLLM (reference §2–§4). Defaults = the reference code; paper variants and ablations are switches."""

    alpha: float = 0.2  # teacher-mix weight α in p̃ = α·p + (1−α)·q; 0 = sample from the student alone (ablation)
    gamma: float = 0.95  # discount (code); the paper has no discount: gamma=1
    length_norm: bool = True  # divide the return by the number of remaining tokens
    whiten: bool = True  # whiten advantages over the padded batch (code); false = paper
    single_step: bool = True  # add the exact per-position reverse KL term
    clip: float = 0.2  # PPO clip ε on ρ = q_θ/p̃
    reward_scaling: float = 0.5  # rewards divided by this (no effect on the gradient when whitening)
    reward_clip: float = 100.0  # rewards clipped to ±this after scaling
    ppo_epochs: int = 4  # passes over each rollout buffer
    num_rollouts: int = 256  # prompts per rollout collection (global)
    rollout_batch_size: int = 16  # prompts per sampling call per process (the reference's `chunk_size`)
    pt_loss: Literal["lm+kd", "lm", "none"] = "lm+kd"  # pretraining term (code: 0.5·LM + 0.5·KD; paper: LM)
    kd_ratio: float = 0.5  # KD share of the PT loss
    lm_coef: float = 1.0  # weight of the PT loss in the total
    pt_chunk_tokens: int = 512  # tokens per packed pretraining chunk
    log_student_rev_kl: bool = True  # α > 0: an extra student-only rollout per round, for the rev-KL log only
    # false: the sampled tokens' log-probs come from the sampler's own per-step distributions (same values up to
    # float rounding, tested); true: the reference's fresh student and teacher forwards after sampling
    rescore: bool = False
    # keep the teacher's response logits of a round across its PPO passes: the teacher runs once per sample per
    # round instead of ppo_epochs times (exact; teacher_cache.py). null: the planner decides by the memory estimate
    # (a stage run by hand: off)
    teacher_cache: bool | None = None
    # validation prompts (the first ones, independent of eval_prompts) whose pure-student samples measure the held-out
    # reverse KL to the teacher at each validation; decoded as one batch
    val_rev_kl_prompts: int = 64
    sampling: SamplingConfig = field(default_factory=SamplingConfig)

    def __post_init__(self) -> None:
        check(0.0 <= self.alpha <= 1.0, f"minillm.alpha must be in [0, 1], got {self.alpha}")
        check(0.0 < self.gamma <= 1.0, f"minillm.gamma must be in (0, 1], got {self.gamma}")
        check(0.0 < self.clip < 1.0, f"minillm.clip must be in (0, 1), got {self.clip}")
        check(self.ppo_epochs >= 1 and self.num_rollouts >= 1, "minillm.ppo_epochs and num_rollouts must be >= 1")
        check(self.reward_scaling > 0, "minillm.reward_scaling must be > 0")
        check(0.0 <= self.kd_ratio <= 1.0, f"minillm.kd_ratio must be in [0, 1], got {self.kd_ratio}")
        check(self.rollout_batch_size >= 1, "minillm.rollout_batch_size must be >= 1")
        check(self.val_rev_kl_prompts >= 1, "minillm.val_rev_kl_prompts must be >= 1")
        check(self.pt_chunk_tokens >= 2, "minillm.pt_chunk_tokens must be >= 2 (inputs and next-token labels)")
        check(self.reward_clip > 0 and self.lm_coef >= 0, "minillm.reward_clip must be > 0 and lm_coef >= 0")


@dataclass
class DeepSpeedConfig:
    """The student as a DeepSpeed engine. Always on when the stage runs as several processes."""

    enabled: bool = False  # also for a single process (e.g. to test the engine path)
    zero_stage: int = 1  # 1: optimizer states sharded | 2: + gradients | 3: + weights (forwards become collective)
    offload_optimizer: bool = False  # ZeRO-3 only: fp32 master weights and Adam moments in host memory
    # replicated: a frozen copy of the teacher per process | zero3: an inference-only ZeRO-3 engine (weights sharded)
    teacher_placement: Literal["replicated", "zero3"] = "replicated"
    # ZeRO-3: gather the student's weights whole while it generates (rollouts, validation): one all-gather per batch
    # instead of one per layer per token, at the cost of its full bf16 weights on every GPU meanwhile
    gather_for_generation: bool = True

    def __post_init__(self) -> None:
        check(self.zero_stage in (1, 2, 3), f"deepspeed.zero_stage must be 1, 2 or 3, got {self.zero_stage}")
        check(not self.offload_optimizer or self.zero_stage == 3,
              "deepspeed.offload_optimizer needs deepspeed.zero_stage=3")


@dataclass
class StageConfig:
    """What every method shares. Defaults: the reference's supervised runs (finetune.py, reference §4)."""

    name: str = "stage"
    method: Method = "sft"
    student: str = "tiny-s"  # init: registry name, HF id, or HF directory
    teacher: str | None = None  # registry name / HF dir; required by kd, seqkd, minillm
    dataset: str = "builtin"  # builtin | dolly | ... | path/to/file.jsonl
    output_dir: str = "runs/stage"
    seed: int = 10
    max_steps: int = 4000  # optimizer steps (~10 epochs of Dolly's 12.4K prompts at 32 sequences per step)
    # sequences per optimizer step, summed over every process: the same at any GPU count (reference: 32 for SFT/KD)
    batch_size: int = 32
    # sequences per forward pass per process; accumulation steps = batch_size / (micro_batch_size × processes)
    micro_batch_size: int = 8
    # recompute activations in the backward pass (less memory, ~1/3 more compute); null: on for ≥ 1B parameters
    gradient_checkpointing: bool | None = None
    max_prompt_tokens: int = 256  # longer prompts are dropped (reference)
    max_new_tokens: int = 256  # response tokens (generation and training targets)
    # alpaca: the reference's template for every family; chat: the tokenizer's chat template (instruct models)
    prompt_format: PromptFormat = "alpaca"
    eval_every_steps: int = 50  # 0 = only at the end
    # also validate the starting model before the first step (logged as step 0, never selected as best); needs
    # eval_every_steps > 0
    eval_at_start: bool = False
    eval_prompts: int = 200  # validation prompts for in-training Rouge-L
    save_every_steps: int = 50  # checkpoint cadence (optimizer steps)
    keep_checkpoints: int = 2  # newest complete checkpoints kept
    # which checkpoint becomes `final`: teacher and SFT baseline best validation Rouge-L; inits `loss` (reference §1)
    select_by: Literal["rouge_l", "loss", "last"] = "rouge_l"
    log_every_steps: int = 10
    dtype: Dtype = "float32"
    tensorboard: bool = True  # TensorBoard under <stage>/tb
    # Weights & Biases, offline under <stage>/wandb (jobs make no network call; `wandb sync` from a login node);
    # needs the optional wandb package
    wandb: bool = False
    wandb_project: str = "takd"
    optim: OptimConfig = field(default_factory=OptimConfig)
    deepspeed: DeepSpeedConfig = field(default_factory=DeepSpeedConfig)

    def __post_init__(self) -> None:
        check(bool(NAME.fullmatch(self.name)), f"name {self.name!r} must be letters, digits, '.', '_' or '-' "
                                               "(it names directories and Slurm jobs)")
        check(bool(self.output_dir), "output_dir must not be empty")
        check(self.max_steps >= 1, f"max_steps must be >= 1, got {self.max_steps}")
        check(self.max_new_tokens >= 1 and self.max_prompt_tokens >= 1,
              f"max_new_tokens and max_prompt_tokens must be >= 1, got {self.max_new_tokens}, {self.max_prompt_tokens}")
        check(self.log_every_steps >= 1, f"log_every_steps must be >= 1, got {self.log_every_steps}")
        check(self.eval_every_steps >= 0 and self.eval_prompts >= 0 and self.seed >= 0,
              "eval_every_steps, eval_prompts and seed must be >= 0")
        check(self.micro_batch_size >= 1 and self.batch_size >= 1, "batch_size and micro_batch_size must be >= 1")
        check(self.batch_size % self.micro_batch_size == 0,
              f"batch_size={self.batch_size} must be a multiple of micro_batch_size={self.micro_batch_size} "
              "(the global batch is micro-batches x accumulation steps x processes)")
        check(self.method == "sft" or bool(self.teacher),
              f"method {self.method!r} needs a teacher: set teacher=<model name or HF directory>")
        check(self.save_every_steps >= 1, "save_every_steps must be >= 1")
        check(self.prompt_format in ("alpaca", "chat"),
              f"prompt_format must be alpaca or chat, got {self.prompt_format!r}")
        check(self.keep_checkpoints >= 1, "keep_checkpoints must be >= 1")

    @property
    def out(self) -> Path:
        return Path(self.output_dir)


@dataclass
class SupervisedStage(StageConfig):
    """A stage trained on a fixed set of sequences (SFT, KD, SeqKD), which may be sized in epochs."""

    # passes over the training examples; when set, it replaces max_steps: ⌈epochs × examples / batch_size⌉ steps
    # (reference: 10-20 epochs)
    epochs: float | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.epochs is None or self.epochs > 0, f"epochs must be > 0, got {self.epochs}")


@dataclass
class SFTStage(SupervisedStage):
    """SFT w/o KD: response-only cross-entropy on gold responses (reference §5)."""

    method: Literal["sft"] = "sft"


@dataclass
class KDStage(SupervisedStage):
    """Word-level KD on gold responses, teacher-forced (reference §5)."""

    method: Literal["kd"] = "kd"
    kd: KDConfig = field(default_factory=KDConfig)


@dataclass
class SeqKDStage(KDStage):
    """SeqKD: KD (or SFT) on one teacher sample per training prompt (reference §5)."""

    method: Literal["seqkd"] = "seqkd"
    seqkd: SeqKDConfig = field(default_factory=SeqKDConfig)


def _minillm_optim() -> OptimConfig:
    # reference §2b: AdamW (0.9, 0.95), eps 1e-8, weight decay 1e-6, 100 warmup steps then constant 5e-6
    return OptimConfig(lr=5e-6, weight_decay=1e-6, beta1=0.9, beta2=0.95, schedule="constant", warmup_steps=100)


@dataclass
class MiniLLMStage(StageConfig):
    """MiniLLM: reverse-KL policy gradient on teacher-mixed rollouts (reference §2-§4)."""

    method: Literal["minillm"] = "minillm"
    max_steps: int = 5000  # optimizer steps (total_iters)
    batch_size: int = 64  # the PPO mini-batch: rollouts per optimizer step, over every process (reference §3: 64)
    micro_batch_size: int = 4  # rollouts per forward pass per process
    eval_every_steps: int = 100
    eval_at_start: bool = True  # the reference's PPO trainer evaluates before its first step
    save_every_steps: int = 500
    # the PT loss's corpus: auto (the family's, prepared by takd.prepare --corpus; tiny models: the toy corpus),
    # builtin (the toy corpus, on purpose) or a directory of MMIDIDX shards (takd.models.corpora)
    pt_dataset: str | None = "auto"
    optim: OptimConfig = field(default_factory=_minillm_optim)
    minillm: MiniLLMConfig = field(default_factory=MiniLLMConfig)


STAGE_CLASSES: dict[str, type[StageConfig]] = {"sft": SFTStage, "kd": KDStage, "seqkd": SeqKDStage,
                                               "minillm": MiniLLMStage}
METHOD_SECTIONS = ("kd", "seqkd", "minillm", "pt_dataset")  # keys only some methods have


CHECKPOINTING_FROM_PARAMS = 1e9  # gradient checkpointing is on by default from this many student parameters


def uses_gradient_checkpointing(cfg: StageConfig, params: float) -> bool:
    """The stage's setting, or (null) on for a student of ≥ 1B parameters."""
    return cfg.gradient_checkpointing if cfg.gradient_checkpointing is not None else params >= CHECKPOINTING_FROM_PARAMS


def optimizer_steps(cfg: StageConfig, n_examples: int) -> int:
    """The stage's optimizer steps: `max_steps`, or ⌈epochs × training examples / batch_size⌉ when it is sized in
    epochs."""
    epochs = getattr(cfg, "epochs", None)
    return cfg.max_steps if epochs is None else max(1, math.ceil(epochs * n_examples / cfg.batch_size))


def accumulation_steps(cfg: StageConfig, world: int) -> int:
    """Micro-batches per optimizer step on each of `world` processes: batch_size / (micro_batch_size × world)."""
    per_process, rest = divmod(cfg.batch_size, world)
    if rest or per_process % cfg.micro_batch_size:
        raise cfglib.ConfigError(
            f"batch_size={cfg.batch_size} cannot be split evenly into micro-batches of {cfg.micro_batch_size} on "
            f"{world} process(es): batch_size must be a multiple of micro_batch_size x processes "
            f"({cfg.micro_batch_size} x {world})")
    return per_process // cfg.micro_batch_size


def fitting_micro_batch(cfg: StageConfig, world: int) -> int | None:
    """The largest micro-batch ≤ cfg.micro_batch_size that splits the global batch evenly over `world` processes,
    or None when batch_size is not a multiple of `world` (then no micro-batch can keep the global batch)."""
    per_process, rest = divmod(cfg.batch_size, world)
    if rest:
        return None
    return max(d for d in range(1, min(cfg.micro_batch_size, per_process) + 1) if per_process % d == 0)


def stage_class(method: object, where: str = "stage") -> type[StageConfig]:
    if not isinstance(method, str) or method not in STAGE_CLASSES:
        raise cfglib.ConfigError(f"{where}: method: expected one of {', '.join(map(repr, STAGE_CLASSES))}, "
                                 f"got {method!r}")
    return STAGE_CLASSES[method]


def stage_config(method: str = "sft", **fields) -> StageConfig:
    """The stage config of `method` with its reference defaults, `fields` set (validated)."""
    return stage_class(method)(method=method, **fields)


def from_mapping(data: dict, source: str) -> StageConfig:
    """A stage config from a plain mapping; its `method` (default sft) picks the class."""
    method = data.get("method", "sft")
    return cfglib.from_dict(stage_class(method, source), {**data, "method": method}, source)


def load_stage(path: str | Path, overrides: list[str] | None = None) -> StageConfig:
    """A stage YAML (e.g. a planned run's `stages/<stage>/stage.yaml`), then `key=value` overrides."""
    data = cfglib.apply_overrides(cfglib.read_yaml(path), overrides or [])
    return from_mapping(data, str(path))
