"""A stage's metrics: `metrics.jsonl` (one JSON row per logged step), the experiment trackers (`trackers`:
TensorBoard, W&B offline), and the console's set-up and eval lines. Only rank 0 writes. On resume, rows logged after
the checkpoint are dropped, since they will be logged again (on a fresh start, all of them: a run killed before its
first checkpoint left rows that will be logged again); a line torn by a kill mid-write is dropped too."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

from takd.train.trackers import SAMPLES_SHOWN, Tracker


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
    def __init__(self, out: Path, stage: str, enabled: bool, trackers: Callable[[], list[Tracker]] = list):
        self.file = out / "metrics.jsonl"
        self.stage, self.enabled = stage, enabled
        self.open_trackers, self.trackers = trackers, None  # opened on the first row logged

    def _trackers(self) -> list[Tracker]:
        if self.trackers is None:
            self.trackers = self.open_trackers()
        return self.trackers

    def log(self, step: int, metrics: dict[str, float], kind: str = "train") -> None:
        if not self.enabled:
            return
        values = {k: float(v) for k, v in metrics.items()}
        row = {"step": step, "kind": kind, **values}
        with open(self.file, "a") as fh:
            fh.write(json.dumps(row) + "\n")
        if kind == "eval":
            shown = ", ".join(f"{k}={v:.4g}" for k, v in metrics.items())
            print(f"[{self.stage}] step {step} eval: {shown}", flush=True)
        for tracker in self._trackers():
            tracker.scalars(step, kind, values)

    def samples(self, step: int, rows: list[dict], generations: list[str]) -> None:
        """A validation's first generations beside their instruction and reference, for the trackers."""
        if not self.enabled:
            return
        from takd.data.rows import references, shown_instruction

        table = [[shown_instruction(r), references(r)[0], g]
                 for r, g in zip(rows[:SAMPLES_SHOWN], generations, strict=False)]
        for tracker in self._trackers():
            tracker.samples(step, table)

    def truncate_after(self, step: int) -> None:
        """Drop rows logged after `step` (a resumed run logs them again)."""
        if not self.enabled or not self.file.is_file():
            return
        kept = [r for r in read_metrics(self.file) if r["step"] <= step]
        self.file.write_text("".join(json.dumps(r) + "\n" for r in kept))

    def close(self) -> None:
        for tracker in self.trackers or []:
            tracker.close()


def setup_line(trainer) -> str:
    """The console's one line about a stage as it starts: models, data, batch, steps, precision, where it writes."""
    cfg, b = trainer.cfg, trainer.backend
    teacher = f", teacher {cfg.teacher}{' (ZeRO-3 sharded)' if b.teacher_sharded else ''}" if trainer.teacher else ""
    epochs = getattr(cfg, "epochs", None)
    n_train = len(trainer.train_examples)
    sized = "" if epochs is None else \
        f" ({epochs:g} epochs x {n_train} examples / {cfg.batch_size} per step, rounded up)"
    recompute = ", gradient checkpointing" if b.checkpointing else ""
    return (f"[{cfg.name}] {cfg.method}: student {cfg.student} ({b.parameter_count() / 1e6:.2f}M params)"
            f"{b.describe()}{teacher}; {n_train} train examples, {len(trainer.valid_examples)} valid; "
            f"{cfg.batch_size} sequences/step ({cfg.micro_batch_size}x{b.accum}x{trainer.world}), "
            f"{trainer.max_steps} steps{sized}, {cfg.dtype} compute{recompute} -> {trainer.out}")


def progress_bar(initial: int, total: int, name: str, enabled: bool = True):
    """tqdm on stderr; in a batch log (no terminal) it updates every 30 s instead of every step."""
    from tqdm import tqdm

    interactive = sys.stderr.isatty()
    return tqdm(total=total, initial=initial, desc=name, file=sys.stderr, dynamic_ncols=True, disable=not enabled,
                mininterval=0.5 if interactive else 30.0)
