"""The HF conventions of an exported model directory (torch-free): a model card (README.md) and the evaluation's
sampling settings as generation_config.json.

The card is written with the weights (base model, teacher, method, its key hyperparameters, data, prompt format,
takd version, commit and run id); `takd.evaluate` later fills its evaluation section in place, between markers, so
the card of a stage's `final/` carries the figures its evaluation stage measured.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

EVAL_BEGIN, EVAL_END = "<!-- takd:evaluation -->", "<!-- /takd:evaluation -->"
NOT_EVALUATED = "Not evaluated yet: `takd.evaluate` (a planned chain's `eval-<stage>`) writes its figures here."
# takd.evaluate's sampling (the reference's protocol, §7): temperature 1, no top-k/top-p filter, no repeated 6-gram
PROTOCOL_SAMPLING = {"do_sample": True, "temperature": 1.0, "top_k": 0, "top_p": 1.0, "no_repeat_ngram_size": 6}
METHOD_NAMES = {"sft": "supervised fine-tuning", "kd": "word-level knowledge distillation",
                "seqkd": "sequence-level knowledge distillation", "minillm": "MiniLLM (reverse-KL policy gradient)"}


def generation_config(max_new_tokens: int, eos_token_id: int | None, pad_token_id: int | None) -> dict[str, Any]:
    """generation_config.json's content: how takd.evaluate samples from the model."""
    return {**PROTOCOL_SAMPLING, "max_new_tokens": max_new_tokens, "eos_token_id": eos_token_id,
            "pad_token_id": pad_token_id}


def run_id(output_dir: str | Path) -> str:
    """A planned stage lives at <run>/stages/<name>: the run directory's name; else the stage directory's."""
    out = Path(output_dir).resolve()
    return out.parents[1].name if out.parent.name == "stages" else out.name


def hyperparameters(stage: dict[str, Any]) -> dict[str, Any]:
    """The keys a reader of the card needs to reproduce the stage: schedule, batch, lengths, the method's section."""
    keys = ("max_steps", "epochs", "batch_size", "max_prompt_tokens", "max_new_tokens", "dtype", "seed")
    out = {k: stage[k] for k in keys if stage.get(k) is not None}
    out.update({f"optim.{k}": v for k, v in stage.get("optim", {}).items()
                if k in ("lr", "schedule", "warmup_steps", "weight_decay")})
    section = stage.get(stage.get("method", ""), {})
    out.update({f"{stage['method']}.{k}": v for k, v in section.items() if not isinstance(v, dict)})
    return out


def _front_matter(base_hub_id: str | None, method: str) -> str:
    tags = ["takd", "knowledge-distillation"] + (["minillm"] if method == "minillm" else [])
    lines = ["---", "library_name: transformers", f"tags: [{', '.join(tags)}]"]
    if base_hub_id:
        lines.append(f"base_model: {base_hub_id}")
    return "\n".join(lines + ["---", ""])


def model_card(stage: dict[str, Any], *, base: str, base_hub_id: str | None, version: str, commit: str) -> str:
    """README.md of a stage's exported model; `stage` is the stage config as a mapping (its stage.yaml)."""
    method, teacher = stage["method"], stage.get("teacher")
    source = f" from the teacher `{teacher}`" if teacher else ""
    rows = "\n".join(f"| `{k}` | {v} |" for k, v in hyperparameters(stage).items())
    return (f"{_front_matter(base_hub_id, method)}\n# {stage['name']}\n\n"
            f"`{base}` trained by {METHOD_NAMES.get(method, method)}{source} with takd {version} (commit {commit}), "
            f"run `{run_id(stage['output_dir'])}`, stage `{stage['name']}`.\n\n"
            f"## Data\n\nDataset `{stage['dataset']}`, prompts in the `{stage.get('prompt_format', 'alpaca')}` format "
            "(alpaca: the MiniLLM reference's template, no BOS; chat: the tokenizer's chat template), prompts over "
            f"{stage['max_prompt_tokens']} tokens dropped, responses of at most {stage['max_new_tokens']} tokens.\n\n"
            f"## Training\n\n| hyperparameter | value |\n|---|---|\n{rows}\n\n"
            f"## Evaluation\n\n{EVAL_BEGIN}\n{NOT_EVALUATED}\n{EVAL_END}\n\n"
            "## Generation\n\n`generation_config.json` holds the evaluation protocol's sampling (temperature 1, no "
            "top-k or top-p filter, no repeated 6-gram, the response length above), so `model.generate(**inputs)` "
            "samples as the evaluation did.\n")


def write_card(directory: str | Path, card: str, generation: dict[str, Any]) -> None:
    d = Path(directory)
    (d / "README.md").write_text(card, encoding="utf-8")
    (d / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")


def add_evaluation(directory: str | Path, table: str) -> bool:
    """Put `table` (Markdown) in the card's evaluation section, atomically; False when the directory has no takd
    card (a hub model or a given teacher: nothing of theirs is rewritten)."""
    readme = Path(directory) / "README.md"
    try:
        text = readme.read_text(encoding="utf-8")
    except OSError:
        return False
    if EVAL_BEGIN not in text or EVAL_END not in text:
        return False
    head, rest = text.split(EVAL_BEGIN, 1)
    tail = rest.split(EVAL_END, 1)[1]
    tmp = readme.with_name(".README.md.tmp")
    tmp.write_text(f"{head}{EVAL_BEGIN}\n{table.strip()}\n{EVAL_END}{tail}", encoding="utf-8")
    os.replace(tmp, readme)
    return True
