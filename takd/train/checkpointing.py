"""A stage's checkpoints and hand-offs: the collective save protocol, resume, HF exports and `final/`.

A checkpoint `<stage>/checkpoints/step-NNNNNN/` holds the HF weights and tokenizer (rank 0), the backend's optimizer
and schedule state (every rank's shards under DeepSpeed), one RNG file per rank and the trainer state (step, best
metric, data positions, the method's own state). Every rank writes into one temporary directory; rank 0 adds the
rest, marks it complete and renames it into place (`takd.checkpoint`): a kill at any point leaves the previous
complete checkpoint as the newest.
"""

from __future__ import annotations

import json
import random
import shutil
import zipfile
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from takd import checkpoint as ckpt
from takd import dist
from takd.config import ConfigError
from takd.models import cards
from takd.models.loading import load_model
from takd.models.registry import write_model_meta
from takd.paths import git_revision
from takd.train.backend import Backend

STATE_FILE = "trainer_state.pt"
Exporter = Callable[[Path, "dict[str, torch.Tensor] | None", "dict[str, Any]"], None]


def rng_state() -> dict[str, Any]:
    """This process's random state (CPU, and the current CUDA device's when there is one: dropout draws there)."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def rank_rng_file(directory: str | Path, rank: int) -> Path:
    """Each rank's random state lives in its own file of a checkpoint (ranks draw different dropout)."""
    return Path(directory) / f"rng-rank{rank:03d}.pt"


def load_trainer_state(directory: str | Path) -> dict[str, Any]:
    # our own file (counters, samplers, the method's state): trusted, so full unpickling is fine
    return torch.load(Path(directory) / STATE_FILE, map_location="cpu", weights_only=False)


def card_for(cfg, tokenizer) -> dict[str, Any]:
    """`write_hf`'s card arguments for a stage: its model card and the evaluation's generation settings."""
    from takd import __version__
    from takd.models import registry

    base = registry.base_model_name(cfg.student)
    spec = registry.resolve(base)
    hub_id = spec.hf_id if spec.hf_id and not spec.is_tiny and not Path(spec.hf_id).is_dir() else None
    text = cards.model_card(asdict(cfg), base=base, base_hub_id=hub_id, version=__version__, commit=git_revision())
    return {"card": text, "generation": cards.generation_config(cfg.max_new_tokens, tokenizer.eos_token_id,
                                                                tokenizer.pad_token_id)}


def write_hf(student, tokenizer, directory: Path, state_dict: dict[str, torch.Tensor] | None, extra: dict[str, Any],
             card: str | None = None, generation: dict[str, Any] | None = None, **meta: Any) -> None:
    """An HF directory (rank 0): `state_dict` as the student's weights, the tokenizer, takd's metadata, the model card
    and generation_config.json (HF conventions); config.json states the dtype of the weights written (transformers
    would write the module's: float32 master weights)."""
    student.save_pretrained(directory, state_dict=state_dict)
    tokenizer.save_pretrained(directory)
    write_model_meta(directory, **meta, **extra)
    if card is not None and generation is not None:
        cards.write_card(directory, card, generation)
    dtype = next((v.dtype for v in (state_dict or {}).values() if v.is_floating_point()), None)
    if dtype is not None:
        config = json.loads((directory / "config.json").read_text())
        (directory / "config.json").write_text(json.dumps({**config, "dtype": str(dtype).split(".")[-1]}, indent=2))


def checkpoint_problem(directory: Path) -> str | None:
    """Why a complete-marked checkpoint cannot be resumed from (a file truncated by a full disk or a failing node),
    or None. Reads only headers: the trainer state, each weight file's safetensors header, the optimizer's zip
    directory (or the DeepSpeed state's presence)."""
    try:
        state = load_trainer_state(directory)
        if "step" not in state:
            return "its trainer state has no step"
    except Exception as err:  # noqa: BLE001 (any unreadable pickle)
        return f"its trainer state is unreadable ({type(err).__name__})"
    from safetensors import safe_open

    weights = sorted(directory.glob("*.safetensors"))
    if not weights:
        return "it holds no weights"
    for f in weights:
        try:
            with safe_open(str(f), "pt"):
                pass
        except Exception as err:  # noqa: BLE001
            return f"{f.name} is unreadable ({type(err).__name__})"
    opt = directory / "optimizer.pt"
    if opt.is_file():
        try:
            zipfile.ZipFile(opt).close()
        except (zipfile.BadZipFile, OSError):
            return "its optimizer state is truncated"
    elif not (directory / "ds").is_dir():
        return "it holds no optimizer state"
    return None


def newest_loadable(root: Path, rank: int) -> Path | None:
    """The newest complete checkpoint that loads. Rank 0 moves unloadable ones aside (`.bad-step-*`, kept for a
    look), saying so, so that every rank then resumes from the same older one."""
    if rank == 0:
        for d in reversed(ckpt.list_checkpoints(root)):
            problem = checkpoint_problem(d)
            if problem is None:
                break
            bad = d.parent / f".bad-{d.name}"
            shutil.rmtree(bad, ignore_errors=True)
            d.rename(bad)
            print(f"checkpoint {d} cannot be resumed from ({problem}); moved to {bad.name}, trying the previous one",
                  flush=True)
    dist.barrier()
    return ckpt.latest_checkpoint(root)


FINGERPRINT_IGNORES = ("name", "output_dir", "keep_checkpoints", "log_every_steps", "tensorboard", "wandb",
                       "wandb_project",
                       "save_every_steps", "eval_every_steps", "eval_prompts")


LENGTH_KEYS = ("max_steps", "epochs")  # a resume may change how long a stage trains, nothing else


def config_fingerprint(cfg) -> dict[str, Any]:
    """What a stage's checkpoints depend on: its config without cadence and naming keys, with paths inside its run
    directory written relative to it (so a moved run directory still resumes)."""
    from takd import config as cfglib

    run_root = str(Path(cfg.output_dir).resolve().parent.parent)
    data = {k: v for k, v in cfglib.to_dict(cfg).items() if k not in FINGERPRINT_IGNORES}
    for key in ("student", "teacher"):
        if isinstance(data.get(key), str) and data[key].startswith(run_root + "/"):
            data[key] = "<run>" + data[key][len(run_root):]
    return data


def config_changes(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """The dotted keys whose values differ, as 'key: old -> new'."""
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += config_changes(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return out


def resumable(root: Path, cfg, rank: int, force_config: bool = False) -> Path | None:
    """The checkpoint a stage resumes from: the newest that loads, made with this config (its length aside). A
    checkpoint of another config is refused with one line naming what changed, or with `force_config` all
    checkpoints are moved aside and the stage starts afresh (a silent resume would train on the old config and
    describe it wrongly)."""
    latest = newest_loadable(root, rank)
    if latest is None:
        return None
    old = load_trainer_state(latest).get("config")
    changes = config_changes(old, config_fingerprint(cfg)) if old is not None else []
    if all(c.split(":")[0] in LENGTH_KEYS for c in changes):
        if changes and rank == 0:  # training for longer (or shorter) continues the same run
            print(f"[{cfg.name}] resuming with {'; '.join(changes)}: the schedule now follows the new length",
                  flush=True)
        return latest
    if not force_config:
        raise ConfigError(f"stage {cfg.name}: its checkpoints were made with another config ({'; '.join(changes[:3])}"
                          f"{'; ...' if len(changes) > 3 else ''}); restore that config, or rerun with --force-config "
                          "to start the stage afresh (its checkpoints are moved aside)")
    if rank == 0:
        aside = root.parent / f"checkpoints.replaced-{latest.name}"
        shutil.rmtree(aside, ignore_errors=True)
        root.rename(aside)
        print(f"[{cfg.name}] config changed ({'; '.join(changes[:3])}): old checkpoints moved to {aside}; starting "
              "afresh", flush=True)
    dist.barrier()
    return None


class Checkpointer:
    """Saves, restores and exports one stage's student. `export(directory, state_dict, extra)` writes an HF
    directory (`write_hf`); every method here is collective: all ranks call it."""

    def __init__(self, out: Path, backend: Backend, keep: int, export: Exporter):
        self.root = out / "checkpoints"
        self.backend, self.export_hf, self.keep = backend, export, keep
        self.rank = backend.rank

    def latest(self) -> Path | None:
        return ckpt.latest_checkpoint(self.root)

    def save(self, step: int, trainer_state: dict[str, Any]) -> Path:
        final = ckpt.step_dir(self.root, step)
        tmp = self.root / f".tmp-{final.name}"
        if self.rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        dist.barrier()
        self.backend.save_state(tmp)
        torch.save(rng_state(), rank_rng_file(tmp, self.rank))
        weights = self.backend.full_state_dict()
        dist.barrier()
        if self.rank == 0:
            self.export_hf(tmp, weights, {"step": step})
            torch.save(trainer_state, tmp / STATE_FILE)
            ckpt.commit_directory(tmp, final)
            ckpt.prune(self.root, self.keep)
        dist.barrier()
        return final

    def restore(self, directory: Path) -> dict[str, Any]:
        """The backend's state and this rank's RNG from `directory`; returns the trainer state to apply."""
        self.backend.load_state(directory)
        set_rng_state(torch.load(rank_rng_file(directory, self.rank), weights_only=False))
        return load_trainer_state(directory)

    def export(self, directory: Path, extra: dict[str, Any] | None = None, verify: bool = False) -> None:
        """The current weights as an HF directory in the stage's dtype, written atomically by rank 0. verify: load
        it back before marking it complete (a stage never hands off weights that do not load)."""
        weights = self.backend.export_state_dict()
        if self.rank == 0:
            with ckpt.atomic_directory(directory) as d:
                self.export_hf(d, weights, extra or {})
                if verify:
                    load_model(str(d))
        dist.barrier()

    def hand_off(self, out: Path, select_by: str, step: int) -> Path:
        """Write `<out>/final/`: the kept best checkpoint by `select_by` (or the last weights), verified loadable."""
        final, best = out / "final", out / "best"
        if select_by != "last" and ckpt.is_complete(best):
            self.promote(best, final)
        else:
            self.export(final, extra={"step": step}, verify=True)
        return final

    def promote(self, best: Path, final: Path) -> None:
        """Copy the kept best checkpoint to `final/`, verified loadable."""
        if self.rank == 0:
            with ckpt.atomic_directory(final) as d:
                for f in best.iterdir():
                    if f.name != ckpt.COMPLETE:
                        shutil.copy2(f, d / f.name)
                load_model(str(d))
        dist.barrier()
