"""Datasets, prompt formatting, tokenisation, batching.

Formats (reference §6):
- Instruction rows: `instruction`, `input` (may be empty), `output` (a string, or a list of references for
  evaluation sets). Prompts use the Alpaca template; the response follows "### Response:\n" directly.
- Tokenisation adds no special tokens; a training sequence is tokens(prompt + response) + [EOS], and the
  response tokens are those after the prompt-length prefix. Rows whose prompt exceeds `max_prompt_tokens`
  are dropped (not truncated), as the reference does.
- The pretraining corpus is one token stream (each document + EOS) cut into fixed-size chunks that ignore
  document boundaries, stored as a flat memory-mapped `uint16`/`int32` numpy file (`<name>.bin` + `.json`).

Real datasets are read only from local files (`$TAKD_HOME/data/<name>/<split>.jsonl`, written by
`takd.prepare`), never from the network inside a job.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from takd.paths import selfinst_file, takd_home

IGNORE_INDEX = -100
BUILTIN = "builtin"
REAL_DATASETS = ("dolly", "selfinst", "vicuna", "sni", "unni")

_HEAD_INPUT = ("Below is an instruction that describes a task, paired with an input that provides further "
               "context. Write a response that appropriately completes the request.")
_HEAD_NO_INPUT = "Below is an instruction that describes a task. Write a response that appropriately completes " \
                 "the request."


class DataNotPrepared(RuntimeError):
    """A dataset is not in the local cache; the message names the prepare command."""


def format_prompt(row: dict) -> str:
    """The Alpaca template used by MiniLLM for every family (reference §6)."""
    inp = (row.get("input") or "").strip()
    if inp:
        return f"{_HEAD_INPUT}\n\n### Instruction:\n{row['instruction']}\n\n### Input:\n{inp}\n\n### Response:\n"
    return f"{_HEAD_NO_INPUT}\n\n### Instruction:\n{row['instruction']}\n\n### Response:\n"


def references(row: dict) -> list[str]:
    out = row["output"]
    return list(out) if isinstance(out, list) else [out]


# ----------------------------------------------------------------------------------------------- loading rows


def read_jsonl(path: str | Path) -> list[dict]:
    with open(path) as fh:
        return [json.loads(line) for line in fh if line.strip()]


def write_jsonl(path: str | Path, rows: list[dict]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w") as fh:
        for r in rows:
            fh.write(json.dumps(r) + "\n")
    tmp.replace(path)


def selfinst_rows(path: str | Path) -> list[dict]:
    """SelfInst (`user_oriented_instructions.jsonl`): one task per line with `instances` of input/output."""
    rows = []
    for task in read_jsonl(path):
        inst = task["instances"][0]
        rows.append({"instruction": task["instruction"], "input": inst.get("input", ""),
                     "output": inst["output"], "task": task.get("id", "")})
    return rows


def data_dir(name: str) -> Path:
    return takd_home() / "data" / name


def load_rows(dataset: str, split: str, seed: int = 0) -> list[dict]:
    """Rows of `dataset`/`split`: `builtin` is generated; real sets come from the prepared local cache
    (or a path to a `.jsonl` file)."""
    from takd.builtin_task import generate_split

    if dataset == BUILTIN:
        return generate_split(split, seed=seed)
    if dataset.endswith(".jsonl"):
        return read_jsonl(dataset)
    if dataset not in REAL_DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; expected {BUILTIN}, one of {', '.join(REAL_DATASETS)}, "
                         "or a path to a .jsonl file")
    f = data_dir(dataset) / f"{split}.jsonl"
    if f.is_file():
        return read_jsonl(f)
    if dataset == "selfinst" and split in ("valid", "test") and selfinst_file() is not None:
        return selfinst_rows(selfinst_file())
    raise DataNotPrepared(f"dataset {dataset!r} split {split!r} not found at {f}; on a login node run: "
                          f"python -m takd.prepare --datasets {dataset}")


# ------------------------------------------------------------------------------------------------ tokenising


@dataclass
class Example:
    """One tokenised instruction example: prompt ids and (possibly empty) response ids incl. the final EOS."""

    prompt_ids: list[int]
    response_ids: list[int]
    row: dict


def encode_rows(rows: list[dict], tokenizer, max_prompt_tokens: int, max_response_tokens: int,
                with_response: bool = True) -> list[Example]:
    """Tokenise rows; drop rows whose prompt is too long, truncate responses (EOS kept last)."""
    out = []
    eos = tokenizer.eos_token_id
    for row in rows:
        prompt = format_prompt(row)
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
            raise ValueError("EpochSampler needs at least one item (is the dataset empty after filtering?)")
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


# ------------------------------------------------------------------------------------- pretraining corpus


def pack_corpus(docs: list[str], tokenizer, chunk_tokens: int, out_prefix: str | Path) -> Path:
    """Tokenise documents (+EOS each) into one stream, cut into `chunk_tokens` chunks, save as mmap numpy.

    The tail that does not fill a chunk is dropped (reference §6: chunks ignore document boundaries).
    """
    stream: list[int] = []
    for d in docs:
        stream.extend(tokenizer(d, add_special_tokens=False)["input_ids"])
        stream.append(tokenizer.eos_token_id)
    n_chunks = len(stream) // chunk_tokens
    if n_chunks == 0:
        raise ValueError(f"corpus has {len(stream)} tokens, fewer than one {chunk_tokens}-token chunk")
    dtype = np.uint16 if len(tokenizer) < 65500 else np.int32
    arr = np.asarray(stream[: n_chunks * chunk_tokens], dtype=dtype).reshape(n_chunks, chunk_tokens)
    out_prefix = Path(out_prefix)
    out_prefix.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_prefix.with_suffix(".bin.tmp")
    arr.tofile(tmp)
    tmp.replace(out_prefix.with_suffix(".bin"))
    meta = {"chunks": n_chunks, "chunk_tokens": chunk_tokens, "dtype": np.dtype(dtype).name}
    out_prefix.with_suffix(".json").write_text(json.dumps(meta))
    return out_prefix.with_suffix(".bin")


class PackedCorpus:
    """Memory-mapped fixed-size chunks; `batch(indices)` gives LM inputs (chunk[:-1]) and labels (chunk[1:])."""

    def __init__(self, prefix: str | Path):
        prefix = Path(prefix)
        meta = json.loads(prefix.with_suffix(".json").read_text())
        self.chunks = np.memmap(prefix.with_suffix(".bin"), dtype=meta["dtype"], mode="r",
                                shape=(meta["chunks"], meta["chunk_tokens"]))

    def __len__(self) -> int:
        return self.chunks.shape[0]

    def batch(self, indices: list[int]) -> dict[str, torch.Tensor]:
        x = torch.from_numpy(np.asarray(self.chunks[indices], dtype=np.int64))
        return {"input_ids": x[:, :-1].contiguous(), "labels": x[:, 1:].contiguous()}


def iterate(examples: list, batch_size: int) -> Iterator[list]:
    for i in range(0, len(examples), batch_size):
        yield examples[i: i + batch_size]
