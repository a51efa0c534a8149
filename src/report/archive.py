"""Runs whose directories are gone, read back from the runs.csv an earlier report wrote (``src.report runs.csv``).

A published result outlives its run dirs (outputs/ is not kept): its runs.csv still holds every run's identity,
protocol, final metrics and the checkpoint it started from, and the curves.csv beside it each run's curve
(src/report/runs.py reads it), so a report can be regenerated from them with today's code, or extended with new
runs. Per-layer diagnostics are not kept (files from before 2026-12-05 keep no curves either); the report says which
code produced the runs (``git_commit``: the column, else the single commit the report.md beside the file names) and
that the runs are archived.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pandas as pd

from src.report.runs import Run, scan

TEST_EXAMPLES = 10_000  # MNIST's and CIFAR-10's test sets: what val_acc was scored on without a val_subset


def _value(x):
    """A runs.csv cell as Python: NaN -> None, '[20, 40]' -> [20, 40], 2.0 -> 2."""
    if x is None or (isinstance(x, float) and pd.isna(x)):
        return None
    if isinstance(x, str) and x.startswith("["):
        return ast.literal_eval(x)
    if isinstance(x, float) and x.is_integer():
        return int(x)
    return x


def report_commit(csv: Path) -> str:
    """The one commit the report.md beside an older runs.csv (no ``git_commit`` column) names, else 'unknown'."""
    report = csv.parent / "report.md"
    found = (
        re.findall(r"Git commit\(s\): `([0-9a-f+dirty]+)`", report.read_text()) if report.is_file() else []
    )
    return found[0] if len(found) == 1 else "unknown"


def run_from_row(row: dict, csv: Path, commit: str) -> Run:
    """One archived run: its summary fields from the row, a config rebuilt from the protocol columns."""
    # where it started (runs.csv files before the init_checkpoint column: only that it did)
    init = (row.get("init_checkpoint") or "archived") if row["init"] == "checkpoint" else None
    optimizer = {"_target_": f"torch.optim.{row['optimizer']}"} | {
        k: row[k] for k in ("lr", "momentum", "weight_decay")
    }
    scheduler = {
        "_target_": f"torch.optim.lr_scheduler.{row['scheduler']}",
        "milestones": row["milestones"],
        "gamma": row["gamma"],
        "hold_epochs": row["hold_epochs"],
        "hold_factor": row.get("hold_factor"),
    }  # fmt: skip  (runs.csv files before it had no hold_factor)
    ste = {"name": row["ste"]} | {k[4:]: row[k] for k in ("ste_eps", "ste_beta", "ste_delta") if row[k]}
    config = {
        "run_name": row["run_name"],
        "seed": row["seed"],
        "tag": row["tag"],
        "model": {"name": row["model"]},
        "ste": ste,
        "quant": {"bits": row["bits"], "alpha": row["alpha"], "alpha_mode": row["alpha_mode"], "ste": ste},
        "wquant": {"name": row.get("wquant") or "fp", "bits": row.get("wbits")},  # older files: float weights
        "optimizer": optimizer,
        "scheduler": {k: v for k, v in scheduler.items() if v is not None},
        "trainer": {"max_epochs": row["max_epochs"]},
        "data": {k: row[k] for k in ("batch_size", "train_subset", "val_subset")},
        "init": {"checkpoint": init},
    }
    summary = {k: row.get(k) for k in ("run_name", "experiment", "data", "model", "bits", "ste", "tag", "seed",
                                         "wquant", "wbits",
                                         "alpha_mode", "epochs", "max_epochs", "train_subset", "val_subset",
                                         "val_acc", "val_acc_best", "best_epoch", "train_loss", "val_loss",
                                         "population_loss", "wall_time_s", "status", "reason")}  # fmt: skip
    summary |= {
        "init_checkpoint": config["init"]["checkpoint"],
        "val_examples": row["val_subset"] or TEST_EXAMPLES,
        "diverged": row["status"] == "diverged",
        "choices": {k: row[k] for k in ("data", "experiment", "model", "ste")},
    }
    provenance = {"git_commit": commit, "archived_from": str(csv), "time_utc": row.get("started")}
    return Run(Path(row["path"]), summary, config, provenance, ("archived",))


def archived_runs(csv: Path) -> list[Run]:
    """Every row of an earlier report's runs.csv as a Run (its curve, where kept, is read from curves.csv)."""
    table = pd.read_csv(csv)
    rows = [{k: _value(v) for k, v in r.items()} for r in table.to_dict("records")]
    fallback = report_commit(csv) if not all(r.get("git_commit") for r in rows) else None
    return [run_from_row(r, csv, r.get("git_commit") or fallback) for r in rows]  # each row's own code


def scan_all(sources, exclude: Path | None = None) -> tuple[list[Run], list[str]]:
    """The runs of every source: a folder (searched for run dirs) or an earlier report's runs.csv (archived)."""
    sources = [Path(s) for s in ([sources] if isinstance(sources, str | Path) else sources)]
    runs, problems = scan([s for s in sources if s.is_dir()], exclude)
    for csv in (s for s in sources if s.is_file()):
        try:
            runs += archived_runs(csv)
        except (OSError, ValueError, KeyError, SyntaxError, pd.errors.ParserError) as err:
            problems.append(f"{csv}: not a runs.csv an earlier report wrote ({type(err).__name__}: {err})")
    return unique(runs), problems


def unique(runs: list[Run]) -> list[Run]:
    """Each run once, however many sources reach it: a run dir under two of the folders given, or a run dir and its
    row in an earlier runs.csv (same run name and start time), which keeps the run dir (it has the curves)."""
    live = {(r["run_name"], r.started) for r in runs if not r.archived_from and r.started}
    seen, out = set(), []
    for run in runs:
        if run.archived_from and (run["run_name"], run.started) in live:
            continue
        key = (run["run_name"], run.started, str(run.path)) if run.archived_from else run.path.resolve()
        if key not in seen:
            seen.add(key)
            out.append(run)
    return out
