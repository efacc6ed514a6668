"""Tokenised examples, batches and the resumable sample order.

Tokenisation adds no special tokens; a training sequence is tokens(prompt + response) + [EOS], and the response
tokens are those after the prompt-length prefix. Rows whose prompt exceeds `max_prompt_tokens` are dropped (not
truncated), as the reference does (reference §6).

Prompt formats: `alpaca`, the reference's template for every family, with no BOS (the reference adds none, LLaMA
included); `chat`, the tokenizer's own chat template with the instruction (and input) as one user turn and the
generation prompt appended: whatever BOS/system text the template writes is part of the prompt, and the answer
ends with the tokenizer's EOS (an instruct model's end-of-turn token, e.g. SmolLM2's `<|im_end|>`).
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from takd.config import ConfigError
from takd.data.rows import format_prompt, references

IGNORE_INDEX = -100


# ------------------------------------------------------------------------------------------------ tokenising


@dataclass
class Example:
    """One tokenised instruction example: prompt ids and (possibly empty) response ids incl. the final EOS."""

    prompt_ids: list[int]
    response_ids: list[int]
    row: dict


def chat_prompt(row: dict, tokenizer) -> str:
    """The row as one user turn in the tokenizer's chat template, ready for the assistant's answer."""
    if not getattr(tokenizer, "chat_template", None):
        raise ConfigError(f"prompt_format chat: the tokenizer of {tokenizer.name_or_path} has no chat template; use "
                          "prompt_format: alpaca")
    if not row.get("instruction"):
        raise ConfigError("prompt_format chat needs each row's `instruction`; this row holds only the reference's "
                          "templated `prompt`: use prompt_format: alpaca")
    inp = (row.get("input") or "").strip()
    user = f"{row['instruction']}\n\n{inp}" if inp else row["instruction"]
    return tokenizer.apply_chat_template([{"role": "user", "content": user}], tokenize=False,
                                         add_generation_prompt=True)


def prompt_text(row: dict, tokenizer, prompt_format: str = "alpaca") -> str:
    return chat_prompt(row, tokenizer) if prompt_format == "chat" else format_prompt(row)


def encode_rows(rows: list[dict], tokenizer, max_prompt_tokens: int, max_response_tokens: int,
                with_response: bool = True, prompt_format: str = "alpaca") -> list[Example]:
    """Tokenise rows in `prompt_format`; drop rows whose prompt is too long, truncate responses (EOS kept last)."""
    out = []
    eos = tokenizer.eos_token_id
    for row in rows:
        prompt = prompt_text(row, tokenizer, prompt_format)
        p_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        if len(p_ids) > max_prompt_tokens:
            continue
        r_ids: list[int] = []
        if with_response:
            full = tokenizer(prompt + references(row)[0], add_special_tokens=False)["input_ids"]
            r_ids = full[len(p_ids):][: max_response_tokens - 1] + [eos]
        out.append(Example(p_ids, r_ids, row))
    return out


def collate_sft(examples: list[Example], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded prompt+response batch; labels are -100 on prompt and padding (response-only CE)."""
    seqs = [e.prompt_ids + e.response_ids for e in examples]
    T = max(len(s) for s in seqs)
    B = len(seqs)
    input_ids = torch.full((B, T), pad_id, dtype=torch.long)
    attention = torch.zeros((B, T), dtype=torch.long)
    labels = torch.full((B, T), IGNORE_INDEX, dtype=torch.long)
    for i, (e, s) in enumerate(zip(examples, seqs, strict=True)):
        input_ids[i, : len(s)] = torch.tensor(s)
        attention[i, : len(s)] = 1
        labels[i, len(e.prompt_ids): len(s)] = torch.tensor(e.response_ids)
    return {"input_ids": input_ids, "attention_mask": attention, "labels": labels}


def collate_prompts(examples: list[Example], pad_id: int) -> dict[str, torch.Tensor]:
    """Left-padded prompts for generation (reference §3: prompts are left-padded)."""
    T = max(len(e.prompt_ids) for e in examples)
    B = len(examples)
    input_ids = torch.full((B, T), pad_id, dtype=torch.long)
    attention = torch.zeros((B, T), dtype=torch.long)
    for i, e in enumerate(examples):
        n = len(e.prompt_ids)
        input_ids[i, T - n:] = torch.tensor(e.prompt_ids)
        attention[i, T - n:] = 1
    return {"input_ids": input_ids, "attention_mask": attention}


# ----------------------------------------------------------------------------------------- resumable order


class EpochSampler:
    """Deterministic shuffled order over `n` items, resumable from (epoch, position).

    The order of epoch e is a permutation seeded by (seed, e), so a restarted job that restores
    (epoch, position) draws exactly the items an uninterrupted run would have drawn.
    """

    def __init__(self, n: int, seed: int, shuffle: bool = True):
        if n <= 0:
            raise ConfigError("no examples left to sample (every prompt longer than max_prompt_tokens, or an empty "
                              "dataset): raise max_prompt_tokens or check the dataset")
        self.n, self.seed, self.shuffle = n, seed, shuffle
        self.epoch, self.position = 0, 0
        self._order = self._make_order()

    def _make_order(self) -> list[int]:
        idx = list(range(self.n))
        if self.shuffle:
            random.Random(f"{self.seed}-{self.epoch}").shuffle(idx)
        return idx

    def next_indices(self, k: int) -> list[int]:
        out = []
        while len(out) < k:
            if self.position >= self.n:
                self.epoch += 1
                self.position = 0
                self._order = self._make_order()
            out.append(self._order[self.position])
            self.position += 1
        return out

    def peek_order(self) -> list[int]:
        """The current epoch's order (read-only; drawing nothing)."""
        return list(self._order)

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.position = state["epoch"], state["position"]
        self._order = self._make_order()


def iterate(examples: list, batch_size: int) -> Iterator[list]:
    for i in range(0, len(examples), batch_size):
        yield examples[i: i + batch_size]
