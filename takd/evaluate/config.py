"""What to evaluate and how (torch-free): one dataclass for a chain profile's `eval:` section, an evaluation stage's
`stage.yaml` and the `takd.evaluate` command line, so each option is spelled out once (its help in `metadata`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from takd.config import check

PROTOCOL_SEEDS = (10, 20, 30, 40, 50)  # reference §7: five sampling seeds, the mean is reported


def _help(text: str, **kw):
    return field(metadata={"help": text}, **kw)


@dataclass
class EvalSettings:
    """How a model is evaluated (the reference §7 protocol by default)."""

    datasets: list[str] = _help("datasets: builtin, dolly, selfinst, vicuna, sni, unni or a .jsonl path",
                                default_factory=lambda: ["builtin"])
    split: str = _help("split of each dataset", default="test")
    seeds: list[int] = _help("sampling seeds, one generation run each", default_factory=lambda: list(PROTOCOL_SEEDS))
    max_prompts: int = _help("evaluate the first N prompts only (0 = all)", default=0)
    max_new_tokens: int = _help("tokens generated at most", default=256)
    max_prompt_tokens: int = _help("prompts longer than this many tokens are dropped", default=256)
    batch_size: int = _help("prompts per generate call", default=16)
    prompt_format: str = _help("alpaca (the reference's template) or chat (the tokenizer's chat template); a "
                               "planned evaluation uses its stage's", default="alpaca")
    exposure_bias: bool = _help("ExAccErr(l) of the model against its teacher (needs --teacher)", default=False)
    exposure_prompts: int = _help("prompts for the exposure-bias estimate", default=50)
    reverse_kl: bool = _help("held-out reverse KL to --teacher on the model's own samples (exact per token, first "
                             "seed, the first dataset's prompts; without --teacher: none) and the share of those "
                             "answers that end with EOS, and their length",
                             default=True)
    calibration: str | None = _help("ECE (10 bins) and accuracy on classification items with `labels`: a JSONL "
                                    "path, or builtin (the built-in task's items)", default=None)
    judge_url: str | None = _help("OpenAI-compatible base URL of an LLM judge (key from $TAKD_JUDGE_API_KEY)",
                                  default=None)
    judge_model: str | None = _help("judge model name at --judge-url", default=None)

    def __post_init__(self) -> None:
        check(bool(self.datasets), "eval.datasets must name at least one dataset")
        check(bool(self.seeds), "eval.seeds must list at least one seed")
        check(self.max_prompts >= 0 and self.batch_size >= 1 and self.max_new_tokens >= 1,
              "eval.max_prompts must be >= 0, batch_size and max_new_tokens >= 1")
        check(self.prompt_format in ("alpaca", "chat"),
              f"prompt_format must be alpaca or chat, got {self.prompt_format!r}")
        check(self.max_prompt_tokens >= 1 and self.exposure_prompts >= 1,
              "eval.max_prompt_tokens and eval.exposure_prompts must be >= 1")


@dataclass
class EvalJob(EvalSettings):
    """One model's evaluation: the settings plus the model, where results go, and the identity of its rows."""

    model: str = _help("registry name or HF directory", default="")
    output_dir: str = _help("folder for results.csv and generations (default: <model>/eval)", default="")
    teacher: str | None = _help("the model's teacher (registry name or HF directory), for --exposure-bias",
                                default=None)
    meta: dict[str, str] = _help("columns copied into every result row (stage, label, ...)", default_factory=dict)

    def __post_init__(self) -> None:
        super().__post_init__()
        check(bool(self.model), "evaluation needs a model: --model <registry name or HF directory>")
        check(not self.exposure_bias or bool(self.teacher), "--exposure-bias needs --teacher")
