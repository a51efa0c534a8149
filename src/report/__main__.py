"""CLI: ``python -m src.report DIR [DIR ...] [--out OUT] [--profile NAME] [--readme README.md]``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from src.report.build import NoRuns, build_report, headline, write_headline


def main(argv: list[str] | None = None) -> int:
    """Parse the command line, write the report and print where it is."""
    parser = argparse.ArgumentParser(prog="python -m src.report", description=__doc__)
    parser.add_argument(
        "dirs", type=Path, nargs="+", metavar="DIR",
        help="folders holding run dirs, searched recursively (single runs, sweeps, pipeline outputs, mixed), or "
        "an earlier report's runs.csv (runs whose dirs are gone: final numbers, and curves from the curves.csv beside it)",
    )  # fmt: skip
    parser.add_argument(
        "--out", type=Path, help="folder for report.md, runs.csv and figures (default DIR/report)"
    )
    parser.add_argument("--profile", help="profile name to state in the report (default: pipeline.json's)")
    parser.add_argument(
        "--readme",
        type=Path,
        help="also write the Table 1 rows (and the W×A and tuned tables, when they ran) into this file's "
        "<!-- results:PROFILE --> block",
    )
    args = parser.parse_args(argv)
    missing = [str(d) for d in args.dirs if not (d.is_dir() or (d.is_file() and d.suffix == ".csv"))]
    if missing:
        parser.error(f"not a directory or a runs.csv: {', '.join(missing)}")
    try:
        path = build_report(args.dirs, args.out, args.profile)
        print(path)
        if args.readme:
            profile = args.profile or path.parent.name
            write_headline(args.readme, profile, headline(args.dirs, path.parent, profile, args.readme))
    except NoRuns as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
