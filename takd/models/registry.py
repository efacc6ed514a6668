"""The model registry (torch-free): short names, families, sizes, tokenizer identities, and what a saved
directory descends from.

Short names (`opt-13b`, `gpt2-120m`, `tiny-s`, ...) come from `configs/models/*.yaml`; the MiniLLM authors' released
checkpoints (`paper-teacher-gpt2-1.5b`, `paper-init-opt-1.3b`, ...) from `configs/released/minillm.yaml`, each a
fine-tune of a registry model (its architecture, size and tokenizer) with a role. Any HF causal-LM id or a local
HF directory is also accepted. The planner reads only this module, so planning never imports torch.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, Literal

from takd import config as cfglib
from takd.models import architecture
from takd.models.snapshots import cached_snapshot, snapshot_problems
from takd.models.vocabulary import first_difference, read_vocabulary
from takd.paths import CONFIG_DIR, builtin_tokenizer_dir, gpt2_bpe_dir


class ModelNotPrepared(cfglib.NotPrepared):
    """A model or tokenizer is not in the local cache; the message names the prepare command."""


@dataclass
class ModelSpec:
    name: str
    family: str
    architecture: Literal["opt", "gpt2", "llama", "other"]
    tokenizer: str  # tokenizer identity: models in a chain must share it
    params_m: float  # millions of parameters
    hf_id: str | None = None  # None for the tiny family (built from `arch`)
    arch: dict[str, int] = field(default_factory=dict)
    role: str = ""  # released checkpoints: teacher | init | sft | kd | seqkd | minillm
    base: str = ""  # released checkpoints: the registry model they fine-tune

    @property
    def is_tiny(self) -> bool:
        return self.hf_id is None


@dataclass
class _FamilyEntry:
    params_m: float
    hf_id: str | None = None
    arch: dict[str, int] = field(default_factory=dict)


@dataclass
class _FamilyFile:
    family: str
    architecture: Literal["opt", "gpt2", "llama", "other"]
    tokenizer: str
    models: dict[str, Any]


@cache
def registry() -> dict[str, ModelSpec]:
    """All models named in configs/models/*.yaml."""
    specs: dict[str, ModelSpec] = {}
    for path in sorted((CONFIG_DIR / "models").glob("*.yaml")):
        fam = cfglib.load(_FamilyFile, path)
        for name, entry in fam.models.items():
            e = cfglib.from_dict(_FamilyEntry, entry, f"{path}: models.{name}")
            if name in specs:
                raise cfglib.ConfigError(f"{path}: model {name!r} is also defined in family {specs[name].family}")
            specs[name] = ModelSpec(name, fam.family, fam.architecture, fam.tokenizer, e.params_m, e.hf_id, e.arch)
    for name, entry in released_entries().items():
        if name in specs or entry.base not in specs:
            raise cfglib.ConfigError(f"{RELEASED_FILE}: {name!r} is already a model, or its base {entry.base!r} is not")
        specs[name] = dataclasses.replace(specs[entry.base], name=name, hf_id=entry.hf_id, role=entry.role,
                                          base=entry.base)
    return specs


RELEASED_FILE = CONFIG_DIR / "released" / "minillm.yaml"
ROLES = ("teacher", "init", "sft", "kd", "seqkd", "minillm")


@dataclass
class ReleasedEntry:
    hf_id: str
    base: str
    role: Literal["teacher", "init", "sft", "kd", "seqkd", "minillm"]
    source: Literal["readme", "card", "cited", "pattern"]


@dataclass
class _ReleasedFile:
    organisation: str
    models: dict[str, Any]


@cache
def released_entries() -> dict[str, ReleasedEntry]:
    """The authors' released checkpoints, by short name (configs/released/minillm.yaml)."""
    f = cfglib.load(_ReleasedFile, RELEASED_FILE)
    return {name: cfglib.from_dict(ReleasedEntry, e, f"{RELEASED_FILE}: models.{name}") for name, e in f.models.items()}


def released(role: str | None = None, family: str | None = None) -> list[ModelSpec]:
    """Released checkpoints, optionally of one role and family, smallest model first."""
    reg = registry()
    out = [reg[n] for n in released_entries() if (role is None or reg[n].role == role)
           and (family is None or reg[n].family == family)]
    return sorted(out, key=lambda s: (s.params_m, ROLES.index(s.role)))


def released_for(base: str, role: str) -> ModelSpec | None:
    """The released checkpoint of `role` fine-tuned from registry model `base`, if the authors released one."""
    return next((s for s in released(role) if s.base == base), None)


FILES = "files:"  # a tokenizer identity that names a directory: compared by content (`tokenizer_problem`)


def resolve(name_or_path: str) -> ModelSpec:
    """A registry name, a local HF directory, or any HF hub id. A hub id the registry knows is its registry model;
    a directory or a cached hub model is sized from its own config.json (`architecture`); an uncached hub id has
    unknown size (0) until `takd.prepare` fetches it."""
    reg = registry()
    if name_or_path in reg:
        return reg[name_or_path]
    path = Path(name_or_path).expanduser()
    if (path / "config.json").is_file():
        return _spec_from_dir(path)
    if "/" in name_or_path and not name_or_path.startswith((".", "/", "~")):
        known = next((s for s in reg.values() if s.hf_id == name_or_path), None)
        if known is not None:
            return dataclasses.replace(known, name=name_or_path)
        snapshot = cached_snapshot(name_or_path)
        if snapshot is not None:
            return dataclasses.replace(_spec_from_config(snapshot), name=name_or_path, hf_id=name_or_path)
        return ModelSpec(name_or_path, "hub", "other", name_or_path, params_m=0.0, hf_id=name_or_path)
    raise cfglib.ConfigError(
        f"unknown model {name_or_path!r}: use a registry name ({', '.join(sorted(reg))}), "
        "an HF hub id like org/name, or a directory holding config.json"
    )


def _spec_from_dir(path: Path) -> ModelSpec:
    base = registry().get(base_model_name(str(path)))  # takd writes takd_model.json into every checkpoint
    if base is not None:
        return ModelSpec(str(path), base.family, base.architecture, base.tokenizer, base.params_m, str(path),
                         base.arch)
    return _spec_from_config(path)


def _spec_from_config(path: Path) -> ModelSpec:
    """A model known only by its directory: size and dimensions from its config.json, tokenizer by content."""
    try:
        cfg = json.loads((path / "config.json").read_text())
    except (OSError, ValueError):
        raise cfglib.ConfigError(f"{path}/config.json cannot be read as JSON; is this an HF model directory?") \
            from None
    arch = cfg.get("model_type", "other")
    arch = arch if arch in ("opt", "gpt2", "llama") else "other"
    params, _exact = architecture.parameter_count(cfg)
    return ModelSpec(str(path), "local", arch, FILES + str(path), params_m=params / 1e6, hf_id=str(path),
                     arch=architecture.dims(cfg))


def tokenizer_files(spec: ModelSpec) -> Path | None:
    """Where a model's tokenizer files are on this machine (None when they are not): its directory, its family
    tokenizer's cache snapshot, or the tiny family's built-in or GPT-2 BPE files."""
    if spec.tokenizer.startswith(FILES):
        return Path(spec.tokenizer[len(FILES):])
    if spec.tokenizer == "builtin-bpe":
        return builtin_tokenizer_dir() if builtin_tokenizer_dir().is_dir() else None
    if spec.tokenizer == "gpt2-bpe":
        return gpt2_bpe_dir()
    return cached_snapshot(spec.tokenizer)


PADDING = 128  # embedding rows a family may add beyond its tokens (OPT: 50272 rows for 50265 tokens)


def tokenizer_problem(a: ModelSpec, b: ModelSpec) -> str | None:
    """Why two models cannot be distilled into one another token by token (None when they share a tokenizer):
    the same registry family shares one by definition; otherwise their vocabulary sizes, then their tokenizer
    files are compared by content. A tiny model's tokenizer not yet built is left to the stage's own check."""
    if a.tokenizer == b.tokenizer:
        return None
    size_a, size_b = a.arch.get("vocab_size"), b.arch.get("vocab_size")
    if size_a and size_b and abs(size_a - size_b) > PADDING:
        return f"{a.name} has a vocabulary of {size_a} tokens, {b.name} {size_b}"
    vocab = {}
    for m in (a, b):
        d = tokenizer_files(m)
        if d is None:
            if m.is_tiny:
                return None  # built on first use; the stage compares the loaded tokenizers before training
            return f"the tokenizer of {m.name} is not on this machine to compare; run {prepare_command([m.name])}"
        vocab[m.name] = read_vocabulary(d)
        if vocab[m.name] is None:
            return f"{d} holds no readable tokenizer files (tokenizer.json, vocab.json or tokenizer.model)"
    diff = first_difference(vocab[a.name], vocab[b.name])
    return None if diff is None else f"{a.name} and {b.name} do not share a tokenizer: {diff}"


def local_config(name_or_path: str) -> dict | None:
    """The config.json of a model directory or of a hub model's cached snapshot, if there is one here."""
    spec = resolve(name_or_path)
    d = Path(spec.hf_id) if spec.hf_id and Path(spec.hf_id).is_dir() else \
        (cached_snapshot(spec.hf_id) if spec.hf_id else None)
    if d is None or not (d / "config.json").is_file():
        return None
    try:
        return json.loads((d / "config.json").read_text())
    except ValueError:
        return None


def max_positions(name_or_path: str) -> int | None:
    """Tokens the model can attend over (prompt + response must fit): the registry's, else its config.json's."""
    spec = resolve(name_or_path)
    if spec.arch.get("max_positions"):
        return int(spec.arch["max_positions"])
    cfg = local_config(name_or_path) or {}
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        if isinstance(cfg.get(key), int):
            return cfg[key]
    return None


def offline_problems(name_or_path: str) -> list[str]:
    """What is missing for `name_or_path` to load without a network ([] when it can): a directory or the HF cache
    snapshot must hold config, weights and tokenizer files (`snapshots.snapshot_problems`). Tiny models can always
    be built locally. No network, no torch."""
    spec = resolve(name_or_path)
    if spec.is_tiny:
        return []
    if spec.hf_id and Path(spec.hf_id).is_dir():
        return snapshot_problems(spec.hf_id)
    snapshot = cached_snapshot(spec.hf_id)
    return snapshot_problems(snapshot) if snapshot is not None else ["everything (not in the HF cache)"]


def is_available_offline(name_or_path: str) -> bool:
    return not offline_problems(name_or_path)


def prepare_command(names: list[str], datasets: list[str] | None = None) -> str:
    """The login-node command that prepares these models (and datasets)."""
    parts = ([f"--models {','.join(names)}"] if names else []) + ([f"--datasets {','.join(datasets)}"] if datasets
                                                                  else [])
    return f"python -m takd.prepare {' '.join(parts)}"

def write_model_meta(d: Path, base: str, **extra: Any) -> None:
    """Record which registry model a saved directory derives from (keeps tokenizer identity across stages)."""
    (Path(d) / "takd_model.json").write_text(json.dumps({"base": base, **extra}, indent=1))


def base_model_name(name_or_path: str) -> str:
    """The registry model a saved directory descends from (its `takd_model.json`), else the name itself."""
    meta = Path(name_or_path) / "takd_model.json"
    return json.loads(meta.read_text()).get("base", name_or_path) if meta.is_file() else name_or_path
