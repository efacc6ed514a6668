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


def recover(parent: str | Path) -> list[str]:
    """Repair what a kill in the middle of `commit_directory` left in `parent`: a complete `.old-<name>-*` copy
    whose `<name>` is missing is put back (so `best/` or `final/` is never lost), and every other leftover
    `.old-*` / `.tmp-*` directory is removed. Returns what it did, one line each."""
    parent = Path(parent)
    done = []
    if not parent.is_dir():
        return done
    for old in sorted(parent.glob(".old-*")):
        name = old.name[len(".old-"):].rsplit("-", 1)[0]
        if not (parent / name).exists() and is_complete(old):
            old.rename(parent / name)
            done.append(f"restored {parent / name} from an interrupted replacement")
        else:
            shutil.rmtree(old, ignore_errors=True)
            done.append(f"removed leftover {old.name}")
    for tmp in parent.glob(".tmp-*"):
        shutil.rmtree(tmp, ignore_errors=True)
        done.append(f"removed unfinished {tmp.name}")
    return done


class StageLock:
    """One writer per stage: `<stage>/LOCK` names its holder (host, pid, Slurm job). A second writer refuses with a
    line naming the holder; a lock whose holder is gone (a dead process on this host, a Slurm job that no longer
    runs, or this very job requeued) is taken over."""

    def __init__(self, directory: str | Path):
        self.file = Path(directory) / "LOCK"
        self.held = False

    def _me(self) -> dict[str, str]:
        import socket

        return {"host": socket.gethostname(), "pid": str(os.getpid()), "job": os.environ.get("SLURM_JOB_ID", "")}

    def _alive(self, holder: dict[str, str]) -> bool:
        import socket
        import subprocess

        me = self._me()
        if holder.get("job") and holder["job"] == me["job"]:
            return False  # this job, requeued: its earlier run is gone
        if holder.get("host") == socket.gethostname() and holder.get("pid", "").isdigit():
            try:
                os.kill(int(holder["pid"]), 0)
                return True
            except ProcessLookupError:
                return False
            except PermissionError:
                return True
        if holder.get("job"):
            try:
                out = subprocess.run(["squeue", "-h", "-j", holder["job"], "-o", "%T"], capture_output=True,
                                     text=True, timeout=30).stdout.strip()
            except (OSError, subprocess.SubprocessError):
                return True  # cannot tell: do not take a running job's stage
            return out in ("RUNNING", "COMPLETING", "CONFIGURING", "SUSPENDED")
        return True

    def holder(self) -> dict[str, str] | None:
        """Who holds the stage now (host, pid, job), or None when nobody does or the holder is gone."""
        import json

        try:
            holder = json.loads(self.file.read_text() or "{}")
        except (ValueError, OSError):
            return None
        return holder if isinstance(holder, dict) and self._alive(holder) else None

    def acquire(self) -> None:
        import json

        self.file.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(2):
            try:
                fd = os.open(self.file, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                try:
                    holder = json.loads(self.file.read_text() or "{}")
                except (ValueError, OSError):
                    holder = {}
                if self._alive(holder):
                    raise StageLocked(f"stage {self.file.parent.name} is being written by another run (host "
                                      f"{holder.get('host', '?')}, pid {holder.get('pid', '?')}"
                                      f"{', Slurm job ' + holder['job'] if holder.get('job') else ''}); wait for it, "
                                      f"or remove {self.file} if it is no longer running") from None
                self.file.unlink(missing_ok=True)  # its holder is gone
                continue
            with os.fdopen(fd, "w") as fh:
                fh.write(json.dumps(self._me()))
            self.held = True
            return
        raise StageLocked(f"could not take {self.file}")

    def release(self) -> None:
        if self.held:
            self.file.unlink(missing_ok=True)
            self.held = False

    def __enter__(self) -> StageLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class StageLocked(RuntimeError):
    """Another writer holds the stage."""
