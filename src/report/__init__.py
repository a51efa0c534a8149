"""The reproduction report: ``python -m src.report ROOT [--out DIR] [--profile NAME]`` reads every run dir under
ROOT (any dir holding summary.json; never modified) and writes report.md with its PNG figures into DIR.

Importable: ``build_report`` (the whole report), ``collect_runs`` (the parsed runs) and ``table1`` (the cells
of Table 1 for one metric: mean, std, n and diverged count per (data, model, bits) and STE).
"""

from src.report.build import build_report
from src.report.runs import Curves, Run, collect_runs, read_curves
from src.report.table1 import PAPER_TABLE1, Cell, table1

__all__ = ["PAPER_TABLE1", "Cell", "Curves", "Run", "build_report", "collect_runs", "read_curves", "table1"]
