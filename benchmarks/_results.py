"""Where every benchmark's measured block goes: printed, and appended to benchmarks/RESULTS.md."""

from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def arguments(doc: str, *extra: tuple[str, dict]):
    """A benchmark's command line: its docstring as help, `--no-record` (print only), and its own options."""
    import argparse

    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--no-record", action="store_true", help="print only; do not append to RESULTS.md")
    for flag, kw in extra:
        ap.add_argument(flag, **kw)
    return ap.parse_args()


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
