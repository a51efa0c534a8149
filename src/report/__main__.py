"""CLI: ``python -m src.report ROOT [--out DIR] [--profile NAME] [--readme README.md]``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from src.report.build import NoRuns, build_report, headline, write_headline


def main(argv: list[str] | None = None) -> int:
    """Parse the command line, write the report and print where it is."""
    parser = argparse.ArgumentParser(prog="python -m src.report", description=__doc__)
    parser.add_argument(
        "root", type=Path, help="folder holding run dirs (searched recursively for summary.json)"
    )
    parser.add_argument(
        "--out", type=Path, help="output folder for report.md and figures (default ROOT/report)"
    )
    parser.add_argument("--profile", help="profile name to state in the report (default: pipeline.json's)")
    parser.add_argument(
        "--readme",
        type=Path,
        help="also write Table 1a's rows (and the W×A and tuned tables, when they ran) into this file's "
        "<!-- results:PROFILE --> block",
    )
    args = parser.parse_args(argv)
    if not args.root.is_dir():
        parser.error(f"{args.root} is not a directory")
    try:
        path = build_report(args.root, args.out, args.profile)
        print(path)
        if args.readme:
            profile = args.profile or path.parent.name
            write_headline(args.readme, profile, headline(args.root, path.parent, profile))
    except NoRuns as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
