"""A tokenizer's vocabulary read from its files (torch-free), so the planner can tell whether two models share one.

Token-level distillation compares distributions id by id, so the models of a chain need the same tokens at the same
ids and the same end-of-sequence token; names say nothing (a directory, a hub id and a registry name may all hold
the OPT tokenizer). Read from `tokenizer.json` (fast tokenizers: the model's vocabulary plus added tokens), else
`vocab.json` (+ `added_tokens.json`); special tokens from `tokenizer_config.json` / `special_tokens_map.json`. A
sentencepiece-only directory (`tokenizer.model`) is compared by its file's bytes.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SPECIAL = ("bos_token", "eos_token", "unk_token")


@dataclass(frozen=True)
class Vocabulary:
    tokens: dict[str, int]  # token -> id, added tokens included; empty for a sentencepiece-only tokenizer
    special: dict[str, str]  # bos/eos/unk token text, where the tokenizer names one
    model_file_sha256: str = ""  # tokenizer.model's bytes, for sentencepiece-only tokenizers


def _json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _token_text(value: Any) -> str | None:
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def read_vocabulary(directory: str | Path) -> Vocabulary | None:
    """The vocabulary of the tokenizer files in `directory`, or None when there are none."""
    d = Path(directory)
    tokens: dict[str, int] = {}
    fast = _json(d / "tokenizer.json")
    if isinstance(fast, dict) and fast.get("model"):
        vocab = (fast.get("model") or {}).get("vocab")
        if isinstance(vocab, dict):
            tokens.update(vocab)
        elif isinstance(vocab, list):  # unigram: [token, score] pairs in id order
            tokens.update({entry[0]: i for i, entry in enumerate(vocab)})
        for added in fast.get("added_tokens") or []:
            tokens[added["content"]] = added["id"]
    elif isinstance(_json(d / "vocab.json"), dict):
        tokens.update(_json(d / "vocab.json"))
        tokens.update(_json(d / "added_tokens.json") or {})
    sha = ""
    if not tokens:
        if not (d / "tokenizer.model").is_file():
            return None
        sha = hashlib.sha256((d / "tokenizer.model").read_bytes()).hexdigest()
    special: dict[str, str] = {}
    for source in (_json(d / "special_tokens_map.json"), _json(d / "tokenizer_config.json")):
        for key in SPECIAL:
            text = _token_text((source or {}).get(key))
            if text is not None:
                special.setdefault(key, text)
    return Vocabulary(tokens, special, sha)


def has_chat_template(directory: str | Path) -> bool:
    """Whether saved tokenizer files carry a chat template (transformers ≥ 4.43 writes chat_template.jinja, older
    versions a `chat_template` key in tokenizer_config.json)."""
    d = Path(directory)
    config = _json(d / "tokenizer_config.json") or {}
    return (d / "chat_template.jinja").is_file() or bool(config.get("chat_template"))


def first_difference(a: Vocabulary, b: Vocabulary) -> str | None:
    """Where two vocabularies first differ, in words (None when they are the same)."""
    if a.model_file_sha256 or b.model_file_sha256:
        if a.model_file_sha256 != b.model_file_sha256 or a.tokens != b.tokens:
            return "their sentencepiece tokenizer.model files differ"
    elif a.tokens != b.tokens:
        by_id_a = {i: t for t, i in a.tokens.items()}
        by_id_b = {i: t for t, i in b.tokens.items()}
        for i in sorted(set(by_id_a) | set(by_id_b)):
            if by_id_a.get(i) != by_id_b.get(i):
                return f"token id {i} is {by_id_a.get(i)!r} in one and {by_id_b.get(i)!r} in the other"
    for key in SPECIAL:
        if key in a.special and key in b.special and a.special[key] != b.special[key]:
            return f"their {key.replace('_token', '')} tokens differ ({a.special[key]!r} vs {b.special[key]!r})"
    return None
