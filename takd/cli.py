"""The umbrella command: `takd <command> [options]` (also `python -m takd <command>`).

    takd plan      plan (and submit) a teacher-assistant chain          = python -m takd.plan
    takd train     run one training stage from its stage.yaml            = python -m takd.train
    takd evaluate  evaluate one model (Rouge-L over seeds, ...)          = python -m takd.evaluate
    takd prepare   download models and datasets on a login node          = python -m takd.prepare
    takd status    one row per stage of a run                            = python -m takd.status
    takd report    the Markdown/HTML report of one or more runs          = python -m takd.report
    takd replicate evaluate the MiniLLM authors' released checkpoints    = python -m takd.replicate

`takd <command> --help` explains each. Nothing heavy is imported until a command runs work.
"""

from __future__ import annotations

import importlib
import sys

COMMANDS = {"plan": "takd.chain.cli", "train": "takd.train.cli", "evaluate": "takd.evaluate.cli",
            "prepare": "takd.chain.prepare", "status": "takd.chain.status", "report": "takd.report.cli",
            "replicate": "takd.chain.replicate"}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    if argv[0] in ("-V", "--version"):
        from takd import __version__

        print(f"takd {__version__}")
        return 0
    if argv[0] not in COMMANDS:
        print(f"error: unknown command {argv[0]!r}; commands: {', '.join(COMMANDS)} (takd --help)", file=sys.stderr)
        return 2
    return importlib.import_module(COMMANDS[argv[0]]).main(argv[1:])
