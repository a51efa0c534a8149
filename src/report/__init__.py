"""The reproduction report: ``python -m src.report ROOT [--out DIR] [--profile NAME]`` reads every run dir under
ROOT (never modified) and writes report.md, runs.csv (one row per run) and its PNG figures into DIR.

Importable: ``build_report`` (the whole report), ``collect_runs`` (the parsed runs), ``run_table`` (them as a
pandas table), ``read_curves`` (a run's metrics.csv) and ``table1`` (the cells of Table 1 for one metric: mean,
std, n, diverged count and repeated seeds per row and STE), ``wxa_cells`` (the weights × activations cells) and
``read_study`` (one tuning.json).
"""

from src.report.build import NoRuns, build_report
from src.report.frame import run_table
from src.report.runs import Run, collect_runs, read_curves
from src.report.table1 import PAPER_TABLE1, Cell, table1
from src.report.tuning import read_study
from src.report.wxa import wxa_cells

__all__ = [
    "PAPER_TABLE1", "Cell", "NoRuns", "Run", "build_report", "collect_runs", "read_curves", "read_study", "run_table",
    "table1", "wxa_cells",
]  # fmt: skip
