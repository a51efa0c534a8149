"""CLI: ``python -m src.theory certify [--out FILE]`` prints the descent certificate of every registry STE;
``python -m src.theory figures [--out DIR]`` writes the figures (default outputs/theory);
``python -m src.theory stes [--out DIR]`` draws every registry STE (σ_α, μ, μ′) in DIR/stes.png."""

from __future__ import annotations

import argparse
from pathlib import Path

from src.theory.certificate import certificate_table
from src.theory.figures import write_figures
from src.theory.ste_figure import write_ste_figure


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and run one command."""
    parser = argparse.ArgumentParser(prog="python -m src.theory", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    cert = sub.add_parser("certify", help="markdown table: descent certificate of every registry STE")
    cert.add_argument("--out", type=Path, help="also write the table to this file")
    cert.add_argument("--m", type=int, default=10, help="patches (length of v)")
    cert.add_argument("--n", type=int, default=20, help="input dimension (length of w)")
    cert.add_argument("--seed", type=int, default=0, help="teacher and sample points")
    cert.add_argument("--points", type=int, default=256, help="random points per set")
    figs = sub.add_parser("figures", help="Figure 1 and Algorithm 1's trajectories as PNG files")
    figs.add_argument("--out", type=Path, default=Path("outputs/theory"), help="output folder")
    stes = sub.add_parser("stes", help="every registry STE: the staircase, μ and μ′ (autograd) in one PNG")
    stes.add_argument("--out", type=Path, default=Path("outputs/theory"), help="output folder (stes.png)")
    args = parser.parse_args(argv)
    if args.command == "certify":
        table = certificate_table(args.m, args.n, args.seed, args.points)
        print(table)
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(table + "\n")
    elif args.command == "stes":
        print(write_ste_figure(args.out))
    else:
        for path in write_figures(args.out):
            print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
