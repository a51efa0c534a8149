"""The report: ``python -m src.report DIR [DIR ...] --out OUT [--profile NAME]`` reads every run dir under the DIRs
(never modified), compares them by the config values that differ, and writes report.md, runs.csv (one row per run)
and its PNG figures into OUT; Table 1 beside the paper's numbers for the runs that follow the paper's protocol.

Importable: ``build_report`` (the whole report), ``collect_runs`` (the parsed runs), ``run_table`` (them as a
pandas table), ``read_curves`` (a run's metrics.csv) and ``table1`` (the cells of Table 1 for one metric: mean,
std, n, diverged count and repeated seeds per row and STE), ``wxa_cells`` (the weights × activations cells) and
``read_study`` (one tuning.json).
"""

from src.report.build import NoRuns, build_report
from src.report.frame import run_table
from src.report.runs import Run, collect_runs, read_curves
from src.report.table1 import Cell, table1
from src.report.tuning import read_study
from src.report.wxa import wxa_cells

__all__ = [
    "Cell", "NoRuns", "Run", "build_report", "collect_runs", "read_curves", "read_study", "run_table",
    "table1", "wxa_cells",
]  # fmt: skip
