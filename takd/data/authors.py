"""The MiniLLM authors' data as they published it (torch-free): which hub repositories and files, how their rows are
turned into takd's, how Dolly is split, and where the pretraining corpora live once prepared (reference §6).

Instruction sets (`MiniLLM/dolly`, `self-inst`, `Vicuna`, `sinst`, `uinst`) are JSONL rows of either shape:
  {"instruction", "input", "output"}     Dolly's raw.jsonl, and evaluation rows that carry the fields
  {"prompt", "output"}                   evaluation rows holding the already-templated prompt
with `output` a string or a list of references (Rouge-L takes the best). A row's `prompt` is what the reference
feeds the model at evaluation (its `<n>` marks are newlines), so takd keeps it and uses it as it is; rows without
one are put in the Alpaca template, which is the same text. Dolly: the first 1000 rows of raw.jsonl are the
validation split and the rest train (their `process_data_dolly.py`, `--dev-num 1000`); valid.jsonl (500 rows) is the
test set. S-NI and UnNI: the `11_` subsets (references of 11 tokens or more); UnNI keeps its first 10,000 rows
(`--dev-num 10000`).

Pretraining corpora (the PT loss's D_PT): MMIDIDX shards, `MiniLLM/openwebtext-processed` for GPT-2 (10M 512-token
chunks) and `MiniLLM/roberta-corpus-processed` for OPT and LLaMA (20M chunks, tokenised per family). They are
downloaded once to `$TAKD_HOME/corpora/<family>/` and read in place.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from takd.config import ConfigError
from takd.paths import takd_home


@dataclass(frozen=True)
class AuthorsSet:
    repo: str  # hub dataset repository
    files: dict[str, str]  # takd split (or "raw") -> file in the repository
    keep_rows: int = 0  # the reference's --dev-num cap on evaluation rows (0: all)


SETS = {
    "dolly": AuthorsSet("MiniLLM/dolly", {"raw": "raw.jsonl", "test": "valid.jsonl"}),
    "selfinst": AuthorsSet("MiniLLM/self-inst", {"test": "valid.jsonl"}),
    "vicuna": AuthorsSet("MiniLLM/Vicuna", {"test": "valid.jsonl"}),
    "sni": AuthorsSet("MiniLLM/sinst", {"test": "11_/valid.jsonl"}),
    "unni": AuthorsSet("MiniLLM/uinst", {"test": "11_/valid.jsonl"}, keep_rows=10_000),
}
PAPER_SETS = tuple(SETS)  # the paper's five evaluation sets (Table 1's columns), in its order
DOLLY_VALID_ROWS = 1000  # process_data_dolly.py --dev-num 1000: the first rows of raw.jsonl
KEPT_FIELDS = ("task", "id", "category", "source")  # carried along for per-task tables

CORPORA = {"gpt2": "MiniLLM/openwebtext-processed", "opt": "MiniLLM/roberta-corpus-processed",
           "llama": "MiniLLM/roberta-corpus-processed"}


# ------------------------------------------------------------------------------------------------ rows
def convert_row(row: dict, where: str) -> dict:
    """One of the authors' rows as a takd row: instruction, input, output (string or list) and, when the row has
    it, the exact prompt the reference uses (`<n>` -> newline)."""
    out = row.get("output")
    if not (isinstance(out, str) or (isinstance(out, list) and out and all(isinstance(o, str) for o in out))):
        raise ConfigError(f"{where}: `output` must be a text or a list of texts")
    prompt, instruction = row.get("prompt"), row.get("instruction")
    if not isinstance(instruction, str) and not isinstance(prompt, str):
        raise ConfigError(f"{where}: a row needs `instruction` (with `input`) or `prompt`")
    new = {"instruction": instruction if isinstance(instruction, str) else "",
           "input": row.get("input") if isinstance(row.get("input"), str) else "", "output": out}
    if isinstance(prompt, str):
        new["prompt"] = prompt.replace("<n>", "\n")
    new.update({k: row[k] for k in KEPT_FIELDS if k in row})
    return new


def convert_rows(rows: list[dict], where: str) -> list[dict]:
    return [convert_row(r, f"{where}: row {n}") for n, r in enumerate(rows, start=1)]


def dolly_splits(raw: list[dict], test: list[dict]) -> dict[str, list[dict]]:
    """Their split: raw.jsonl's first 1000 rows validate, the rest train; valid.jsonl (500) is the test set."""
    if len(raw) <= DOLLY_VALID_ROWS:
        raise ConfigError(f"MiniLLM/dolly raw.jsonl has {len(raw)} rows; the split needs more than "
                          f"{DOLLY_VALID_ROWS} (a truncated download?)")
    return {"valid": raw[:DOLLY_VALID_ROWS], "train": raw[DOLLY_VALID_ROWS:], "test": test}


def eval_splits(name: str, rows: list[dict]) -> dict[str, list[dict]]:
    """An evaluation-only set: its rows (capped as the reference does) serve as test and as valid."""
    keep = SETS[name].keep_rows
    rows = rows[:keep] if keep else rows
    return {"test": rows, "valid": rows}


# ------------------------------------------------------------------------------------------------ corpora
def corpus_root(family: str) -> Path:
    return takd_home() / "corpora" / family


def corpus_files(listing: list[str], family: str) -> list[str]:
    """The `.bin`/`.idx` files of a corpus repository that a family needs: those under a folder named after the
    family when the repository has such folders (the RoBERTa corpus is tokenised once per family), else all."""
    shards = [f for f in listing if f.endswith((".bin", ".idx"))]
    mine = [f for f in shards if family in PurePosixPath(f).parts[:-1]]
    return sorted(mine or shards)


def find_corpus(family: str) -> Path | None:
    """The prepared corpus directory of a family (the folder holding a `train_0` shard), or None."""
    from takd.data.mmidx import shard_prefixes

    root = corpus_root(family)
    if not root.is_dir():
        return None
    found = sorted((p.parent for p in root.rglob("train_0.idx") if shard_prefixes(p.parent, "train")),
                   key=lambda d: (family not in d.relative_to(root).parts, len(d.parts)))
    return found[0] if found else None
