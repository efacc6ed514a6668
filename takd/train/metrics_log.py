"""A stage's metrics: `metrics.jsonl` (one JSON row per logged step), TensorBoard scalars, and the console's eval
line. Only rank 0 writes. On resume, rows logged after the checkpoint are dropped, since they will be logged again
(on a fresh start, all of them: a run killed before its first checkpoint left rows that will be logged again);
a line torn by a kill mid-write is dropped too."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def read_metrics(path: Path) -> list[dict]:
    """The rows of a metrics.jsonl; a line torn by a kill mid-write (or otherwise unreadable) is skipped."""
    rows = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and "step" in row and "kind" in row:
            rows.append(row)
    return rows


class MetricsLog:
    def __init__(self, out: Path, stage: str, enabled: bool, tensorboard: bool):
        self.file = out / "metrics.jsonl"
        self.stage, self.enabled, self.tensorboard = stage, enabled, tensorboard
        self.writer = None

    def log(self, step: int, metrics: dict[str, float], kind: str = "train") -> None:
        if not self.enabled:
            return
        row = {"step": step, "kind": kind, **{k: float(v) for k, v in metrics.items()}}
        with open(self.file, "a") as fh:
            fh.write(json.dumps(row) + "\n")
        if kind == "eval":
            shown = ", ".join(f"{k}={v:.4g}" for k, v in metrics.items())
            print(f"[{self.stage}] step {step} eval: {shown}", flush=True)
        if self.tensorboard:
            if self.writer is None:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(self.file.parent / "tb"))
            for k, v in metrics.items():
                self.writer.add_scalar(f"{kind}/{k}", v, step)

    def truncate_after(self, step: int) -> None:
        """Drop rows logged after `step` (a resumed run logs them again)."""
        if not self.enabled or not self.file.is_file():
            return
        kept = [r for r in read_metrics(self.file) if r["step"] <= step]
        self.file.write_text("".join(json.dumps(r) + "\n" for r in kept))

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def progress_bar(initial: int, total: int, name: str, enabled: bool = True):
    """tqdm on stderr; in a batch log (no terminal) it updates every 30 s instead of every step."""
    from tqdm import tqdm

    interactive = sys.stderr.isatty()
    return tqdm(total=total, initial=initial, desc=name, file=sys.stderr, dynamic_ncols=True, disable=not enabled,
                mininterval=0.5 if interactive else 30.0)
