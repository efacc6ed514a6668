"""Which pretraining corpus a MiniLLM stage's PT loss reads (torch-free; the planner and the trainer both ask).

`pt_dataset` is `auto` (the default), `builtin` (the toy corpus, said explicitly) or a directory of MMIDIDX shards
(`train_0.bin/.idx`, ...). `auto` means: the tiny family's built-in corpus for tiny models; for a real model, its
family's corpus as the authors published it (`takd.prepare --corpus <family>`). A real model never falls back to
the toy corpus by itself: its PT term would regularise it towards a few hundred synthetic sentences.
"""

from __future__ import annotations

from takd.config import ConfigError
from takd.data.authors import CORPORA, find_corpus
from takd.data.mmidx import shard_prefixes
from takd.models import registry

AUTO, BUILTIN = "auto", "builtin"


def family_of(model: str) -> registry.ModelSpec:
    """The registry spec a model (name, hub id or a stage's saved directory) descends from."""
    return registry.resolve(registry.base_model_name(model))


def corpus_problem(value: str | None, student: str) -> str | None:
    """Why `pt_dataset` cannot be read for this student (None when it can)."""
    try:
        resolve_corpus(value, student)
        return None
    except ConfigError as err:
        return str(err)


def resolve_corpus(value: str | None, student: str) -> str:
    """`builtin` or the directory the PT loss reads; a one-line ConfigError when there is none."""
    value = value or AUTO
    if value == BUILTIN:
        return BUILTIN
    if value != AUTO:
        if not shard_prefixes(value, "train"):
            raise ConfigError(f"pt_dataset {value}: no train_0.bin/.idx there (a directory of MMIDIDX shards, e.g. "
                              "one prepared by python -m takd.prepare --corpus <family>)")
        return value
    spec = family_of(student)
    if spec.is_tiny:
        return BUILTIN
    found = find_corpus(spec.family) if spec.family in CORPORA else None
    if found is not None:
        return str(found)
    how = f"on a login node run python -m takd.prepare --corpus {spec.family}" if spec.family in CORPORA else \
        f"the authors published no corpus for the {spec.family} family: set pt_dataset to a directory of MMIDIDX shards"
    raise ConfigError(f"MiniLLM's PT loss for {student} needs its family's pretraining corpus: {how}; or set "
                      "pt_dataset=builtin (the toy corpus, on purpose) or minillm.pt_loss=none")
