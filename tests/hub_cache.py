"""An HF hub cache laid out as huggingface_hub lays it out, for tests that must not download."""

from __future__ import annotations

from pathlib import Path


def cache_snapshot(hub: Path, repo: str, files: dict[str, str]) -> Path:
    """A cache entry for `repo` under `hub` (refs/main -> snapshots/<commit>/...) holding `files`."""
    entry = hub / f"models--{repo.replace('/', '--')}"
    (entry / "refs").mkdir(parents=True)
    (entry / "refs" / "main").write_text("0" * 40)
    snap = entry / "snapshots" / ("0" * 40)
    snap.mkdir(parents=True)
    for name, text in files.items():
        (snap / name).write_text(text)
    return snap
