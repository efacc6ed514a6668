"""Instruction rows (torch-free): the prompt template, references, JSONL files, where each dataset is read from.

Formats (reference §6): `instruction`, `input` (may be empty), `output` (a string, or a list of references for
evaluation sets). Prompts use the Alpaca template; the response follows "### Response:\n" directly.
Real datasets are read only from local files (`$TAKD_HOME/data/<name>/<split>.jsonl`, written by
`takd.prepare`), never from the network inside a job.
"""

from __future__ import annotations

import json
from pathlib import Path

from takd.config import ConfigError, NotPrepared
from takd.paths import selfinst_file, takd_home

BUILTIN = "builtin"
REAL_DATASETS = ("dolly", "selfinst", "vicuna", "sni", "unni")

_HEAD_INPUT = ("Below is an instruction that describes a task, paired with an input that provides further "
               "context. Write a response that appropriately completes the request.")
_HEAD_NO_INPUT = "Below is an instruction that describes a task. Write a response that appropriately completes " \
                 "the request."


class DataNotPrepared(NotPrepared):
    """A dataset is not in the local cache; the message names the prepare command."""


def format_prompt(row: dict) -> str:
    """The Alpaca template used by MiniLLM for every family (reference §6); a row that carries the reference's own
    `prompt` (the authors' evaluation files, `takd.data.authors`) is given that text as it is."""
    if isinstance(row.get("prompt"), str) and row["prompt"]:
        return row["prompt"]
    inp = (row.get("input") or "").strip()
    if inp:
        return f"{_HEAD_INPUT}\n\n### Instruction:\n{row['instruction']}\n\n### Input:\n{inp}\n\n### Response:\n"
    return f"{_HEAD_NO_INPUT}\n\n### Instruction:\n{row['instruction']}\n\n### Response:\n"


def shown_instruction(row: dict) -> str:
    """The row's task as a reader sees it in tables: its instruction (or the reference's prompt), then its input."""
    inp = row.get("input")
    return (row.get("instruction") or row.get("prompt") or "") + (f"\n{inp}" if inp else "")


def references(row: dict) -> list[str]:
    out = row["output"]
    return list(out) if isinstance(out, list) else [out]


# ----------------------------------------------------------------------------------------------- loading rows


def read_jsonl(path: str | Path) -> list[dict]:
    """The JSON objects of a JSONL file, one per non-empty line; a bad line is a one-line ConfigError."""
    rows = []
    with open(path, encoding="utf-8", errors="strict") as fh:
        try:
            for n, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except ValueError:
                    raise ConfigError(f"{path}: line {n} is not JSON") from None
                if not isinstance(row, dict):
                    raise ConfigError(f"{path}: line {n} is not a JSON object")
                rows.append(row)
        except UnicodeDecodeError:
            raise ConfigError(f"{path}: not a UTF-8 text file") from None
    return rows


def check_rows(rows: list[dict], source: str) -> list[dict]:
    """Instruction rows need an `instruction` and an `output` (a string or a list of strings); none is an error."""
    if not rows:
        raise ConfigError(f"{source}: no rows (an empty dataset)")
    for n, row in enumerate(rows, start=1):
        out = row.get("output")
        if not (isinstance(row.get("instruction"), str) or isinstance(row.get("prompt"), str)) or not (
                isinstance(out, str) or (isinstance(out, list) and out and all(isinstance(o, str) for o in out))):
            raise ConfigError(f"{source}: row {n} needs `instruction` (text; or the full `prompt`) and `output` (text "
                              "or list of texts)")
    return rows


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


def unknown_dataset(dataset: str) -> str | None:
    """Why `dataset` names no dataset takd can read (None when it does)."""
    if dataset == BUILTIN or dataset in REAL_DATASETS:
        return None
    if dataset.endswith(".jsonl"):
        return None if Path(dataset).is_file() else f"no such file {dataset}"
    return f"unknown dataset {dataset!r}; expected {BUILTIN}, one of {', '.join(REAL_DATASETS)}, or a .jsonl file"


def missing_splits(dataset: str, splits: tuple[str, ...]) -> list[str]:
    """The splits of `dataset` that are not on this machine (jobs read them offline); [] when all are."""
    if dataset == BUILTIN:
        return []
    if dataset.endswith(".jsonl"):
        return [] if Path(dataset).is_file() else list(splits)
    shared = selfinst_file() is not None and dataset == "selfinst"
    return [s for s in splits if not (data_dir(dataset) / f"{s}.jsonl").is_file()
            and not (shared and s in ("valid", "test"))]


def load_rows(dataset: str, split: str, seed: int = 0) -> list[dict]:
    """Rows of `dataset`/`split`: `builtin` is generated; real sets come from the prepared local cache
    (or a path to a `.jsonl` file)."""
    from takd.data.builtin import generate_split

    if dataset == BUILTIN:
        return generate_split(split, seed=seed)
    if dataset.endswith(".jsonl"):
        return check_rows(read_jsonl(dataset), dataset)
    if dataset not in REAL_DATASETS:
        raise ConfigError(f"unknown dataset {dataset!r}; expected {BUILTIN}, one of {', '.join(REAL_DATASETS)}, "
                          "or a path to a .jsonl file")
    f = data_dir(dataset) / f"{split}.jsonl"
    if f.is_file():
        return check_rows(read_jsonl(f), str(f))
    if dataset == "selfinst" and split in ("valid", "test") and selfinst_file() is not None:
        return selfinst_rows(selfinst_file())
    raise DataNotPrepared(f"dataset {dataset!r} split {split!r} not found at {f}; on a login node run: "
                          f"python -m takd.prepare --datasets {dataset}")
