"""Experiment trackers a stage writes to, behind one small interface: TensorBoard (`tensorboard: true`, the
default) and Weights & Biases in offline mode (`wandb: true`, off by default; an optional dependency).

The cluster pattern: compute nodes have no internet, so a job writes its W&B run offline under the stage directory
(`<stage>/wandb/offline-run-*`) and `wandb sync <stage>/wandb/offline-run-*` uploads it later from a login node.
Each tracker gets the stage's resolved config as hyperparameters, every logged scalar (`train/...`, `eval/...`) and,
at each validation, a table of sample generations (instruction, reference, the student's answer).

A thin interface of ours rather than accelerate's trackers: accelerate's go through an `Accelerator` (which takd's
DeepSpeed backend does not use), and its W&B tracker calls `wandb.init` in whatever mode the environment sets,
online by default; here offline mode is forced in code, so a job never makes a network call whatever the
environment says, and `wandb` is imported only when a stage asks for it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Protocol

from takd.config import ConfigError

SAMPLES_SHOWN = 8  # generations logged per validation
SAMPLE_COLUMNS = ["instruction", "reference", "generation"]


class Tracker(Protocol):
    def scalars(self, step: int, kind: str, values: dict[str, float]) -> None: ...

    def samples(self, step: int, rows: list[list[str]]) -> None: ...

    def close(self) -> None: ...


class TensorBoard:
    """Scalars as `<kind>/<name>`, the config and the samples as text, under `<stage>/tb`."""

    def __init__(self, directory: Path, config: dict[str, Any]):
        import yaml
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(directory / "tb"))
        self.writer.add_text("config", "```\n" + yaml.safe_dump(config, sort_keys=False) + "```", 0)

    def scalars(self, step: int, kind: str, values: dict[str, float]) -> None:
        for k, v in values.items():
            self.writer.add_scalar(f"{kind}/{k}", v, step)

    def samples(self, step: int, rows: list[list[str]]) -> None:
        cell = lambda text: text.replace("|", "\\|").replace("\n", " ")  # noqa: E731 - one Markdown table cell
        table = ["| " + " | ".join(SAMPLE_COLUMNS) + " |", "|---|---|---|"] + \
            ["| " + " | ".join(cell(x) for x in row) + " |" for row in rows]
        self.writer.add_text("samples", "\n".join(table), step)

    def close(self) -> None:
        self.writer.close()


class WandbOffline:
    """A W&B run in offline mode under `<stage>/wandb`, named after the stage; `wandb sync` uploads it."""

    def __init__(self, directory: Path, project: str, name: str, config: dict[str, Any]):
        try:
            import wandb
        except ImportError:
            raise ConfigError("wandb: true needs the optional wandb package (pip install wandb), or set wandb: false") \
                from None
        os.environ["WANDB_MODE"] = "offline"  # no network call from a job, whatever the environment says
        os.environ.setdefault("WANDB_SILENT", "true")
        self.wandb = wandb
        self.run = wandb.init(project=project, name=name, dir=str(directory), mode="offline", config=config,
                              reinit="create_new")

    def scalars(self, step: int, kind: str, values: dict[str, float]) -> None:
        self.run.log({f"{kind}/{k}": v for k, v in values.items()}, step=step)

    def samples(self, step: int, rows: list[list[str]]) -> None:
        self.run.log({"samples": self.wandb.Table(columns=SAMPLE_COLUMNS, data=rows)}, step=step)

    def close(self) -> None:
        self.run.finish()


def open_trackers(directory: Path, name: str, config: dict[str, Any], tensorboard: bool, wandb: bool,
                  wandb_project: str) -> list[Tracker]:
    out: list[Tracker] = [TensorBoard(directory, config)] if tensorboard else []
    return out + ([WandbOffline(directory, wandb_project, name, config)] if wandb else [])


def wandb_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("wandb") is not None
