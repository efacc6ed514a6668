"""What makes a model directory complete, and what to download for it (torch-free).

A directory (an HF cache snapshot, or a directory a user or a stage saved) holds a usable model when it has
`config.json`, every weight file its index names (or the one weights file), and tokenizer files. `takd.prepare`
downloads exactly that on a login node and then also builds the model on the meta device; the planner and the
jobs check it offline. Downloads take a repo's safetensors weights when it has them, else its PyTorch `.bin`
weights (facebook/opt-* ship only those), never its TF, Flax, ONNX or Rust copies.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

# config, generation and tokenizer files a model directory may carry (any that the repo has are downloaded)
SIDE_FILES = ("config.json", "generation_config.json", "tokenizer_config.json", "special_tokens_map.json",
              "added_tokens.json", "tokenizer.json", "vocab.json", "merges.txt", "tokenizer.model")
# one of these sets makes a tokenizer: a fast tokenizer file, a byte-level BPE, a sentencepiece model
TOKENIZER_SETS = (("tokenizer.json",), ("vocab.json", "merges.txt"), ("tokenizer.model",))
WEIGHT_FORMATS = (("model", ".safetensors"), ("pytorch_model", ".bin"))  # preferred first


class NoWeights(ValueError):
    """A repository listing has no weights takd can load."""


def select_download(listing: list[str], repo: str = "the repository") -> list[str]:
    """The files of a repo listing that make a loadable model: its safetensors weights (shards and index) if it
    has them, else its PyTorch .bin weights, plus config and tokenizer files. Only the repo's top level counts."""
    top = [f for f in listing if "/" not in f]
    side = [f for f in top if f in SIDE_FILES]
    for prefix, ext in WEIGHT_FORMATS:
        index = f"{prefix}{ext}.index.json"
        weights = [f for f in top if f.startswith(prefix) and f.endswith(ext)]
        if weights:
            return sorted(set(weights + side + ([index] if index in top else [])))
    raise NoWeights(f"{repo} has no safetensors or PyTorch weights at its top level "
                    f"({', '.join(sorted(top)[:8])}{'...' if len(top) > 8 else ''})")


def snapshot_problems(directory: str | Path) -> list[str]:
    """What a model directory lacks to be loaded offline: [] when it is complete."""
    d = Path(directory)
    problems = [] if (d / "config.json").is_file() else ["config.json"]
    problems += _weight_problems(d)
    if not any(all((d / f).is_file() for f in files) for files in TOKENIZER_SETS):
        problems.append("tokenizer files (tokenizer.json, or vocab.json + merges.txt, or tokenizer.model)")
    return problems


def _weight_problems(d: Path) -> list[str]:
    for prefix, ext in WEIGHT_FORMATS:
        index = d / f"{prefix}{ext}.index.json"
        if index.is_file():
            try:
                shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            except (ValueError, KeyError):
                return [f"a readable {index.name}"]
            missing = [s for s in shards if not (d / s).is_file()]
            return [f"weight shards {', '.join(missing)} (named by {index.name})"] if missing else []
        if (d / f"{prefix}{ext}").is_file():
            return []
    return ["weights (model.safetensors, pytorch_model.bin, or their shards with an index)"]


def hub_cache_dir() -> str:
    """The HF hub cache, read from the environment now (huggingface_hub reads it once, at import)."""
    hf_home = Path(os.environ.get("HF_HOME") or Path.home() / ".cache" / "huggingface").expanduser()
    return os.environ.get("HF_HUB_CACHE") or str(hf_home / "hub")


def cached_snapshot(repo: str) -> Path | None:
    """The local snapshot directory of a hub repo (its main revision), if any of it is in the cache."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo, "config.json", cache_dir=hub_cache_dir())
    return Path(found).parent if isinstance(found, str) else None
