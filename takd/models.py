"""Model registry and offline-first loading.

Short names (`opt-13b`, `gpt2-120m`, `tiny-s`, ...) come from `configs/models/*.yaml`. Any HF causal-LM id or
a local HF directory is also accepted. Loading never touches the network inside a job: hub models load with
`local_files_only=True`, and a miss raises `ModelNotPrepared` naming the `takd.prepare` command to run on a
login node. Tiny models are random-init from their config and materialised once by `takd.prepare` (or on
first use) into `$TAKD_HOME/models/<name>`, tokenizer saved beside them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, Literal

import torch
from transformers import AutoConfig, AutoModelForCausalLM, OPTConfig, PreTrainedModel

from takd import config as cfglib
from takd.paths import CONFIG_DIR, gpt2_bpe_dir, takd_home
from takd.tokenization import gpt2_bpe, load_tokenizer, train_builtin_bpe

TINY_MAX_POSITIONS = 512  # tokens


class ModelNotPrepared(RuntimeError):
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
    return specs


def resolve(name_or_path: str) -> ModelSpec:
    """A registry name, a local HF directory, or any HF hub id (treated as an unknown-size causal LM)."""
    reg = registry()
    if name_or_path in reg:
        return reg[name_or_path]
    path = Path(name_or_path).expanduser()
    if (path / "config.json").is_file():
        return _spec_from_dir(path)
    if "/" in name_or_path and not name_or_path.startswith((".", "/", "~")):
        return ModelSpec(name_or_path, "hub", "other", name_or_path, params_m=0.0, hf_id=name_or_path)
    raise cfglib.ConfigError(
        f"unknown model {name_or_path!r}: use a registry name ({', '.join(sorted(reg))}), "
        "an HF hub id like org/name, or a directory holding config.json"
    )


def _spec_from_dir(path: Path) -> ModelSpec:
    import json

    base = registry().get(base_model_name(str(path)))  # takd writes takd_model.json into every checkpoint
    if base is not None:
        return ModelSpec(str(path), base.family, base.architecture, base.tokenizer, base.params_m, str(path))
    cfg = json.loads((path / "config.json").read_text())
    arch = cfg.get("model_type", "other")
    arch = arch if arch in ("opt", "gpt2", "llama") else "other"
    return ModelSpec(str(path), "local", arch, str(path), params_m=0.0, hf_id=str(path))


def tiny_config(spec: ModelSpec, vocab_size: int, eos_id: int) -> OPTConfig:
    a = spec.arch
    return OPTConfig(
        vocab_size=vocab_size,
        hidden_size=a["hidden_size"],
        num_hidden_layers=a["num_hidden_layers"],
        num_attention_heads=a["num_attention_heads"],
        ffn_dim=a["ffn_dim"],
        word_embed_proj_dim=a["hidden_size"],
        max_position_embeddings=TINY_MAX_POSITIONS,
        dropout=0.0,
        attention_dropout=0.0,
        pad_token_id=eos_id,
        bos_token_id=eos_id,
        eos_token_id=eos_id,
    )


def tiny_dir(name: str) -> Path:
    return takd_home() / "models" / name


def builtin_tokenizer_dir() -> Path:
    return takd_home() / "tokenizers" / "builtin-bpe"


def prepare_builtin_tokenizer(force: bool = False) -> Path:
    """Train (once) and save the built-in BPE; returns its directory."""
    from takd.builtin_task import generate_split, pretraining_corpus
    from takd.data import format_prompt

    out = builtin_tokenizer_dir()
    if (out / "tokenizer.json").is_file() and not force:
        return out
    texts = [format_prompt(r) + r["output"] for r in generate_split("train")] + pretraining_corpus()
    tok = train_builtin_bpe(texts)
    _atomic_save(lambda d: tok.save_pretrained(d), out)
    return out


def prepare_tiny(name: str, seed: int = 0, force: bool = False) -> Path:
    """Materialise a tiny model (random init from config, fixed seed) + tokenizer as an HF directory."""
    spec = registry()[name]
    if not spec.is_tiny:
        raise ValueError(f"{name} is not a tiny model")
    out = tiny_dir(name)
    if (out / "config.json").is_file() and not force:
        return out
    tok = tokenizer_for(spec)
    cfg = tiny_config(spec, vocab_size=len(tok), eos_id=tok.eos_token_id)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg)

    def write(d: Path) -> None:
        model.save_pretrained(d)
        tok.save_pretrained(d)
        write_model_meta(d, base=name)

    _atomic_save(write, out)
    return out


def tokenizer_for(spec: ModelSpec):
    """The tokenizer of a model spec, offline."""
    if spec.tokenizer == "builtin-bpe":
        return load_tokenizer(prepare_builtin_tokenizer())
    if spec.tokenizer == "gpt2-bpe":
        bpe = gpt2_bpe_dir()
        if bpe is None:
            raise ModelNotPrepared("gpt2-bpe tokenizer files not found: set TAKD_GPT2_BPE to a dir with vocab.json "
                                   "and merges.txt")
        return gpt2_bpe(bpe)
    source = spec.hf_id if spec.hf_id and Path(spec.hf_id).is_dir() else spec.tokenizer
    try:
        return load_tokenizer(source)
    except (OSError, ValueError) as err:
        raise ModelNotPrepared(_not_prepared_message(spec, "tokenizer", err)) from None


def model_dir(name_or_path: str) -> Path | str:
    """Where a model's weights load from: a local dir for tiny/local models, else the hub id (cache-only)."""
    spec = resolve(name_or_path)
    if spec.is_tiny:
        return prepare_tiny(spec.name)
    return spec.hf_id if spec.hf_id else name_or_path


def load_model(name_or_path: str, dtype: torch.dtype = torch.float32) -> PreTrainedModel:
    """Load a causal LM offline. Tiny models are prepared on first use (no network involved)."""
    spec = resolve(name_or_path)
    source = model_dir(name_or_path)
    try:
        return AutoModelForCausalLM.from_pretrained(str(source), dtype=dtype, local_files_only=True)
    except OSError as err:
        raise ModelNotPrepared(_not_prepared_message(spec, "weights", err)) from None


def load_tokenizer_for(name_or_path: str):
    spec = resolve(name_or_path)
    if spec.is_tiny:
        return load_tokenizer(prepare_tiny(spec.name))
    if spec.hf_id and Path(spec.hf_id).is_dir():
        return load_tokenizer(spec.hf_id)
    return tokenizer_for(spec)


def is_available_offline(name_or_path: str) -> bool:
    """True when weights load without a network (tiny models always can be built locally)."""
    spec = resolve(name_or_path)
    if spec.is_tiny or (spec.hf_id and Path(spec.hf_id).is_dir()):
        return True
    try:
        AutoConfig.from_pretrained(spec.hf_id, local_files_only=True)
        return True
    except (OSError, ValueError):
        return False


def prepare_command(names: list[str]) -> str:
    return f"python -m takd.prepare --models {','.join(names)}"


def _not_prepared_message(spec: ModelSpec, what: str, err: Exception) -> str:
    hf_home = os.environ.get("HF_HOME", "~/.cache/huggingface")
    return (f"{spec.name} ({spec.hf_id}) {what} not found in the local cache (HF_HOME={hf_home}); "
            f"on a login node with internet run: {prepare_command([spec.name])}")


def write_model_meta(d: Path, base: str, **extra: Any) -> None:
    """Record which registry model a saved directory derives from (keeps tokenizer identity across stages)."""
    import json

    (Path(d) / "takd_model.json").write_text(json.dumps({"base": base, **extra}, indent=1))


def base_model_name(name_or_path: str) -> str:
    """The registry model a saved directory descends from (its `takd_model.json`), else the name itself."""
    import json

    meta = Path(name_or_path) / "takd_model.json"
    return json.loads(meta.read_text()).get("base", name_or_path) if meta.is_file() else name_or_path


def _atomic_save(write, out: Path) -> None:
    from takd.checkpoint import atomic_directory

    with atomic_directory(out) as tmp:
        write(tmp)


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
