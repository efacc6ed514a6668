"""Build the report of one or more chain runs: `python -m takd.report RUN_DIR [RUN_DIR ...] [--out DIR]`.

Sections: Rouge-L of every evaluated model (mean ± 95 % interval over seeds), the direct-vs-TA table per dataset,
the TA-size curve, calibration, exposure bias and training curves; figures are PNG files beside report.md/html.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from takd.errors import cli


@cli
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m takd.report", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dirs", nargs="+")
    ap.add_argument("--out", default=None, help="report folder (default: <first run>/report)")
    args = ap.parse_args(argv)
    runs = [Path(r) for r in args.run_dirs]
    missing = [r for r in runs if not (r / "plan.yaml").is_file()]
    if missing:
        print(f"error: {missing[0]} is not a takd run directory (no plan.yaml)", file=sys.stderr)
        return 2
    from takd.report.build import build_report

    report = build_report(runs, Path(args.out) if args.out else runs[0] / "report")
    print(f"report: {report} (and {report.with_suffix('.html').name})")
    return 0
