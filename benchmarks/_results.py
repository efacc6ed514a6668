"""Where every benchmark's measured block goes: printed, and appended to benchmarks/RESULTS.md."""

from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def record(block: str, write: bool = True) -> None:
    print(block)
    if write:
        with open(RESULTS, "a") as fh:
            fh.write(block)
