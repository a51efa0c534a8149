"""Read run directories (written by src/train.py) without touching them: summary, config, provenance, curves."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
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
    def status(self) -> str:
        """finished, diverged, failed or interrupted (older summaries carry only ``diverged``)."""
        return self["status"] or ("diverged" if self["diverged"] else "finished")

    @property
    def kind(self) -> str:
        """Which report section the run belongs to: two_layer, fig2, fig4, fp or table1 (from summary fields)."""
        if self["model"] == "two_layer" or self["data"] == "gaussian":
            return "two_layer"
        if self["experiment"] in (FIG2, FIG4):
            return "fig2" if self["experiment"] == FIG2 else "fig4"
        return "fp" if self["bits"] is None else "table1"

    def value(self, metric: str) -> float | None:
        """A summary metric, or None unless the run finished with a finite value."""
        x = self[metric]
        if self.status != "finished" or x is None or not math.isfinite(x):
            return None  # a diverged run's last logged numbers describe no minimum; never average them
        return float(x)


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def _read_yaml(path: Path) -> dict:
    return (yaml.safe_load(path.read_text()) or {}) if path.is_file() else {}


def collect_runs(root: Path, exclude: Path | None = None) -> list[Run]:
    """Every run dir under root whose files parse (interrupted ones included), sorted by path."""
    return scan(root, exclude)[0]


def identity_from_config(run_dir: Path, config: dict) -> dict:
    """What an interrupted run (no summary.json) was, read from its config: enough to list it."""
    data = str((config.get("data") or {}).get("_target_", "?")).rsplit(".", 1)[-1]
    quant = config.get("quant") or {}
    return {
        "run_name": run_dir.name,
        "model": (config.get("model") or {}).get("name"),
        "data": data.removesuffix("DataModule").lower(),
        "ste": (config.get("ste") or {}).get("name"),
        "bits": quant.get("bits"),
        "alpha_mode": quant.get("alpha_mode"),
        "seed": config.get("seed"),
        "tag": config.get("tag"),
        "status": "interrupted",
        "reason": "no summary.json: interrupted or still running",
    }


def scan(root: Path, exclude: Path | None = None) -> tuple[list[Run], list[Path]]:
    """The runs under root and the run dirs whose files did not parse.

    A run dir holds summary.json, or (interrupted) config.yaml and provenance.json only. ``exclude`` (the
    report's own output folder) is skipped, so a report written inside ROOT is never read back.
    """
    runs, bad = [], []
    dirs = {p.parent for name in ("summary.json", "provenance.json") for p in Path(root).rglob(name)}
    exclude = exclude.resolve() if exclude else None
    for run_dir in sorted(dirs):
        if exclude and run_dir.resolve().is_relative_to(exclude):
            continue
        try:
            config, prov = _read_yaml(run_dir / "config.yaml"), _read_json(run_dir / "provenance.json")
            summary = _read_json(run_dir / "summary.json") or identity_from_config(run_dir, config)
        except (OSError, ValueError, yaml.YAMLError):  # a half-written file: report it, do not crash
            bad.append(run_dir)
            continue
        runs.append(Run(run_dir, summary, config, prov))
    return runs, bad


def read_curves(run: Run) -> pd.DataFrame:
    """metrics.csv indexed by epoch (0 = the starting point, e = after epoch e); empty when there is none."""
    path = run.path / "metrics.csv"
    if not path.is_file():
        return pd.DataFrame(index=pd.Index([], name="epoch"))
    return pd.read_csv(path).set_index("epoch").sort_index()
