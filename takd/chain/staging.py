"""Copy a stage's model inputs to node-local disk before loading them (the Alliance's advice for data read at job
start: `$SLURM_TMPDIR` is a local SSD, Lustre is shared and slow for many ranks reading multi-GB weights at once).

On when the cluster profile says so (`stage_inputs`, exported to the job as TAKD_STAGE_INPUTS=1) and the job has a
`$SLURM_TMPDIR`: every input directory over STAGE_FROM_GB (a planned stage's `final/`, or a hub model's cache
snapshot) is copied once per node by its local rank 0, the node's other ranks waiting for it; the stage then loads
the copy. The copy time is logged. A copy of a hub snapshot records which registry model it is (takd_model.json).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import time
from pathlib import Path

from takd import checkpoint as ckpt
from takd.models import registry
from takd.models.snapshots import cached_snapshot

STAGE_FROM_GB = 2.0


def source_dir(name_or_path: str) -> Path | None:
    """The local directory a model input is read from, if it is one (a directory, or a hub id's snapshot)."""
    if Path(name_or_path).is_dir():
        return Path(name_or_path)
    spec = registry.resolve(name_or_path)
    return None if spec.is_tiny or not spec.hf_id else cached_snapshot(spec.hf_id)


def dir_gb(d: Path) -> float:
    return sum(f.stat().st_size for f in d.rglob("*") if f.is_file()) / 1e9


def stage_inputs(cfg, tmpdir: Path, local_rank: int, threshold_gb: float = STAGE_FROM_GB, wait_s: float = 3600.0):
    """`cfg` with its student and teacher read from node-local copies of the inputs over `threshold_gb`."""
    changes = {}
    for key in ("student", "teacher"):
        value = getattr(cfg, key)
        src = source_dir(value) if value else None
        if src is None or dir_gb(src) < threshold_gb:
            continue
        dest = tmpdir / "takd-inputs" / key
        if local_rank == 0:
            t0 = time.time()
            with ckpt.atomic_directory(dest) as d:
                shutil.rmtree(d)
                shutil.copytree(src, d)  # follows the cache's symlinks: real files on local disk
                if not (d / "takd_model.json").is_file():
                    registry.write_model_meta(d, base=registry.base_model_name(value))
            print(f"[{cfg.name}] staged {key} {value} to {dest} ({dir_gb(dest):.1f} GB in {time.time() - t0:.0f} s)",
                  flush=True)
        else:
            deadline = time.time() + wait_s
            while not ckpt.is_complete(dest):
                if time.time() > deadline:
                    raise TimeoutError(f"[{cfg.name}] {dest} was never staged by the node's local rank 0")
                time.sleep(1.0)
        changes[key] = str(dest)
    return dataclasses.replace(cfg, **changes) if changes else cfg


def maybe_stage(cfg):
    """Stage the inputs when the job asks for it (TAKD_STAGE_INPUTS=1) and has node-local disk."""
    tmpdir = os.environ.get("SLURM_TMPDIR")
    if os.environ.get("TAKD_STAGE_INPUTS") != "1" or not tmpdir or not Path(tmpdir).is_dir():
        return cfg
    from takd import dist

    return stage_inputs(cfg, Path(tmpdir), dist.local_rank())
