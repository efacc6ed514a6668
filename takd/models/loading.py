"""Offline-first loading of models and tokenizers, and the tiny family built locally.

Loading never touches the network inside a job: hub models load with `local_files_only=True`, and a miss raises
`ModelNotPrepared` naming the `takd.prepare` command to run on a login node. Tiny models are random-init from their
config and materialised once by `takd.prepare` (or on first use) into `$TAKD_HOME/models/<name>`, tokenizer saved
beside them.
"""

from __future__ import annotations

import functools
import hashlib
import os
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, OPTConfig, PreTrainedModel

from takd.data.tokenizers import gpt2_bpe, load_tokenizer, train_builtin_bpe
from takd.models.registry import ModelNotPrepared, ModelSpec, prepare_command, registry, resolve, write_model_meta
from takd.models.snapshots import cached_snapshot, snapshot_problems
from takd.paths import builtin_tokenizer_dir, gpt2_bpe_dir, tiny_dir

TINY_MAX_POSITIONS = 512  # tokens


def tiny_config(spec: ModelSpec, vocab_size: int, eos_id: int) -> OPTConfig:
    a = spec.arch
    return OPTConfig(
        vocab_size=vocab_size,
        hidden_size=a["hidden_size"],
        num_hidden_layers=a["num_hidden_layers"],
        num_attention_heads=a["num_attention_heads"],
        ffn_dim=a["ffn_dim"],
        word_embed_proj_dim=a["hidden_size"],
        max_position_embeddings=a.get("max_positions", TINY_MAX_POSITIONS),
        dropout=0.0,
        attention_dropout=0.0,
        pad_token_id=eos_id,
        bos_token_id=eos_id,
        eos_token_id=eos_id,
    )


WORLD_FILE = "builtin-world.sha256"  # which built-in world a cached tokenizer was trained on


def _builtin_texts() -> list[str]:
    from takd.data.builtin import generate_split, pretraining_corpus
    from takd.data.rows import format_prompt, references

    return [format_prompt(r) + references(r)[0] for r in generate_split("train")] + pretraining_corpus()


@functools.cache
def _world_stamp() -> str:
    """sha256 of the built-in tokenizer's training texts: a pure function of this code, computed once per process
    (every tiny model load checks it)."""
    return hashlib.sha256("\n".join(_builtin_texts()).encode()).hexdigest()


def prepare_builtin_tokenizer(force: bool = False) -> Path:
    """Train (once per built-in world) and save the built-in BPE; returns its directory. A tokenizer cached from
    an earlier version of the world is retrained, so an old `$TAKD_HOME` never tokenises a world it never saw."""
    out = builtin_tokenizer_dir()
    stamp = _world_stamp()
    fresh = (out / "tokenizer.json").is_file() and (out / WORLD_FILE).is_file() \
        and (out / WORLD_FILE).read_text().strip() == stamp
    if fresh and not force:
        return out
    tok = train_builtin_bpe(_builtin_texts())

    def write(d: Path) -> None:
        tok.save_pretrained(d)
        (d / WORLD_FILE).write_text(stamp + "\n")

    _atomic_save(write, out)
    return out


def _tokenizer_matches(model_dir: Path, spec: ModelSpec) -> bool:
    """A materialised tiny model carries the tokenizer it was built with; the built-in one must be today's."""
    if spec.tokenizer != "builtin-bpe":
        return True
    saved, current = model_dir / "tokenizer.json", prepare_builtin_tokenizer() / "tokenizer.json"
    return saved.is_file() and saved.read_bytes() == current.read_bytes()


def prepare_tiny(name: str, seed: int = 0, force: bool = False) -> Path:
    """Materialise a tiny model (random init from config, fixed seed) + tokenizer as an HF directory."""
    spec = registry()[name]
    if not spec.is_tiny:
        raise ValueError(f"{name} is not a tiny model")
    out = tiny_dir(name)
    if (out / "config.json").is_file() and _tokenizer_matches(out, spec) and not force:
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
    # the model's own files first (a prepared snapshot carries them); the family's tokenizer repo otherwise
    own = Path(spec.hf_id) if spec.hf_id and Path(spec.hf_id).is_dir() else \
        (cached_snapshot(spec.hf_id) if spec.hf_id else None)
    source = own if own is not None and not snapshot_problems(own) else spec.tokenizer
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


def check_same_tokenizer(student_tok, teacher_tok, student: str, teacher: str) -> None:
    """Teacher and student must share a vocabulary (token-level losses compare distributions per id)."""
    from takd.config import ConfigError

    if student_tok.get_vocab() != teacher_tok.get_vocab() or student_tok.eos_token_id != teacher_tok.eos_token_id:
        raise ConfigError(
            f"tokenizers differ: student {student} ({len(student_tok)} tokens, eos {student_tok.eos_token_id}) vs "
            f"teacher {teacher} ({len(teacher_tok)} tokens, eos {teacher_tok.eos_token_id}); every model of a "
            "chain must use the same tokenizer (pick one model family)")


def _not_prepared_message(spec: ModelSpec, what: str, err: Exception) -> str:
    hf_home = os.environ.get("HF_HOME", "~/.cache/huggingface")
    return (f"{spec.name} ({spec.hf_id}) {what} not found in the local cache (HF_HOME={hf_home}); "
            f"on a login node with internet run: {prepare_command([spec.name])}")


def _atomic_save(write, out: Path) -> None:
    from takd.checkpoint import atomic_directory

    with atomic_directory(out) as tmp:
        write(tmp)


def meta_parameter_count(directory: str | Path) -> int:
    """Build the model of a directory's config on the meta device (no memory, no weights read) and count its
    parameters: proves this transformers knows the architecture and the config is sound."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(str(directory), local_files_only=True)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return count_parameters(model)


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def quiet_transformers() -> None:
    """Per-shard progress bars and load reports from transformers drown our own log in Slurm output files."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def disable_dropout(model: torch.nn.Module) -> None:
    """Every dropout probability (and OPT's layerdrop) to 0, module by module: in train mode the model then computes
    what it computes in eval mode. MiniLLM trains without dropout (reference §2b) but in train mode, the mode in which
    transformers applies gradient checkpointing."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
        for name, value in list(vars(module).items()):
            if isinstance(value, float) and ("dropout" in name or "layerdrop" in name):
                setattr(module, name, 0.0)
