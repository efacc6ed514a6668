"""Atomic directories: nothing half-written is ever taken for a checkpoint or a hand-off (torch-free).

Every save goes to a hidden temporary sibling directory, gets a `COMPLETE` marker last, is fsynced, and is then
renamed into place (rename is atomic on one POSIX filesystem, Lustre included). Readers only consider
directories that carry the marker, so a job killed mid-save leaves at most a `.tmp-*` directory that the next
save removes.

Layout of a stage output directory:

    <stage>/checkpoints/step-000120/   HF weights + tokenizer + optimizer/engine state + trainer state + COMPLETE
    <stage>/final/                      HF directory handed to the next stage (+ COMPLETE)
    <stage>/DONE                        written by the launcher after `final/` is verified loadable
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

COMPLETE = "COMPLETE"


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def commit_directory(tmp: Path, final: Path) -> None:
    """Mark a fully written `tmp` complete, fsync it, and rename it to `final` (replacing an older copy)."""
    (tmp / COMPLETE).write_text("ok\n")
    for f in tmp.rglob("*"):
        if f.is_file():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
    if final.exists():
        # Move the old one aside first so that `final` is never missing a complete copy for long.
        old = final.parent / f".old-{final.name}-{uuid.uuid4().hex[:8]}"
        final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(final)
    _fsync_dir(final.parent)


@contextmanager
def atomic_directory(final: str | Path) -> Iterator[Path]:
    """Yield a temporary directory; on success mark it complete and rename it to `final` (replacing it)."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".tmp-{final.name}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
        commit_directory(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def is_complete(path: str | Path) -> bool:
    return (Path(path) / COMPLETE).is_file()


def step_dir(root: str | Path, step: int) -> Path:
    return Path(root) / f"step-{step:06d}"


def step_of(checkpoint: str | Path) -> int:
    """The optimizer step a `step-NNNNNN` checkpoint directory was saved at."""
    return int(Path(checkpoint).name.split("-")[1])


def list_checkpoints(root: str | Path) -> list[Path]:
    """Complete checkpoints under `root`, oldest first (partial `.tmp-*` dirs are ignored)."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [p for p in root.glob("step-*") if p.is_dir() and is_complete(p)]
    return sorted(found, key=step_of)


def latest_checkpoint(root: str | Path) -> Path | None:
    ckpts = list_checkpoints(root)
    return ckpts[-1] if ckpts else None


def prune(root: str | Path, keep: int, protect: tuple[Path, ...] = ()) -> None:
    """Delete all but the newest `keep` complete checkpoints (never those in `protect`), and stale temp dirs."""
    root = Path(root)
    for p in root.glob(".tmp-*"):
        shutil.rmtree(p, ignore_errors=True)
    ckpts = list_checkpoints(root)
    protected = {p.resolve() for p in protect}
    for p in ckpts[: max(0, len(ckpts) - keep)]:
        if p.resolve() not in protected:
            shutil.rmtree(p, ignore_errors=True)
