"""Where every benchmark's measured block goes: printed, and appended to benchmarks/RESULTS.md."""

from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def record(block: str, write: bool = True) -> None:
    print(block)
    if write:
        with open(RESULTS, "a") as fh:
            fh.write(block)


def table_block(title: str, setting: str, text: str, columns: list[str], rows: list[str]) -> str:
    """A RESULTS.md section: `## title (date, machine, setting)`, a paragraph, a Markdown table of `rows`."""
    import datetime as dt
    import platform

    head = f"| {' | '.join(columns)} |\n|{'---|' * len(columns)}\n"
    return f"\n## {title} ({dt.date.today()}, {platform.machine()}, {setting})\n\n{text}\n\n{head}" + \
        "\n".join(rows) + "\n"
