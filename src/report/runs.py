"""Read run directories (written by src/train.py) without touching them: summary, config, provenance, curves."""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import yaml

# The experiment names the pipeline gives the instability runs (conf/experiment/*.yaml)
FIG2, FIG4 = "fig2_identity_repelled", "fig4_relu_2bit"


@dataclass(frozen=True)
class Run:
    """One run directory: its summary.json, config.yaml and provenance.json as plain dicts."""

    path: Path
    summary: dict
    config: dict = field(default_factory=dict)
    provenance: dict = field(default_factory=dict)

    def __getitem__(self, key: str):
        return self.summary.get(key)

    @property
    def kind(self) -> str:
        """Which report section the run belongs to: two_layer, fig2, fig4, fp or table1 (from summary fields)."""
        if self["model"] == "two_layer" or self["data"] == "gaussian":
            return "two_layer"
        if self["experiment"] in (FIG2, FIG4):
            return "fig2" if self["experiment"] == FIG2 else "fig4"
        return "fp" if self["bits"] is None else "table1"

    def value(self, metric: str) -> float | None:
        """A summary metric, or None when the run diverged or the metric is missing or not finite."""
        x = self[metric]
        if self["diverged"] or x is None or not math.isfinite(x):
            return None  # a diverged run's last logged numbers describe no minimum; never average them
        return float(x)


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def _read_yaml(path: Path) -> dict:
    return (yaml.safe_load(path.read_text()) or {}) if path.is_file() else {}


def collect_runs(root: Path, exclude: Path | None = None) -> list[Run]:
    """Every run dir under root (any dir holding summary.json) whose files parse, sorted by path."""
    return scan(root, exclude)[0]


def scan(root: Path, exclude: Path | None = None) -> tuple[list[Run], list[Path]]:
    """The runs under root and the run dirs whose files did not parse.

    ``exclude`` (the report's own output folder) is skipped, so a report written inside ROOT is never read back.
    """
    runs, bad = [], []
    exclude = exclude.resolve() if exclude else None
    for path in sorted(Path(root).rglob("summary.json")):
        run_dir = path.parent
        if exclude and run_dir.resolve().is_relative_to(exclude):
            continue
        try:
            summary = json.loads(path.read_text())
            config, prov = _read_yaml(run_dir / "config.yaml"), _read_json(run_dir / "provenance.json")
        except (OSError, ValueError, yaml.YAMLError):  # a half-written file: report it, do not crash
            bad.append(run_dir)
            continue
        runs.append(Run(run_dir, summary, config, prov))
    return runs, bad


def unfinished_dirs(root: Path, runs: list[Run], exclude: Path | None = None) -> list[Path]:
    """Run dirs that started (provenance.json written) but hold no summary.json: interrupted or still running."""
    done = {r.path.resolve() for r in runs}
    exclude = exclude.resolve() if exclude else None
    out = []
    for path in sorted(Path(root).rglob("provenance.json")):
        run_dir = path.parent.resolve()
        if run_dir in done or (run_dir / "summary.json").exists():
            continue
        if not (exclude and run_dir.is_relative_to(exclude)):
            out.append(path.parent)
    return out


def _number(text: str | None) -> float | None:
    return float(text) if text not in (None, "") else None


@dataclass
class Curves:
    """Per-epoch metrics of one run: ``start`` is the validation before training, ``epochs[e]`` after epoch e."""

    start: dict[str, float] = field(default_factory=dict)
    epochs: dict[int, dict[str, float]] = field(default_factory=dict)

    def series(self, metric: str) -> tuple[list[int], list[float]]:
        """x (0 = starting point, e + 1 = after epoch e) and the metric's values where logged."""
        points = [(0, self.start[metric])] if metric in self.start else []
        points += [(e + 1, m[metric]) for e, m in sorted(self.epochs.items()) if metric in m]
        return [x for x, _ in points], [y for _, y in points]


METRICS = ("train/loss", "val/acc", "val/loss", "val/population_loss")


def read_curves(run: Run) -> Curves:
    """Parse metrics.csv: a val row at step 0 before any epoch's row is the starting point (src/train.py)."""
    curves = Curves()
    path = run.path / "metrics.csv"
    if not path.is_file():
        return curves
    with path.open(newline="") as f:
        for row in csv.DictReader(f):
            values = {m: _number(row.get(m)) for m in METRICS}
            values = {m: v for m, v in values.items() if v is not None}
            epoch = _number(row.get("epoch"))
            if not values or epoch is None:  # LearningRateMonitor rows carry no epoch and no metric
                continue
            # a resumed run has no such row: its first val row (step > 0) is an epoch's, not a starting point
            if not curves.epochs and "train/loss" not in values and _number(row.get("step")) == 0:
                curves.start = values
                continue
            curves.epochs.setdefault(int(epoch), {}).update(values)  # a later (resumed) row wins
    return curves
