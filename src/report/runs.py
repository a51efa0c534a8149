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
# Stage dirs (<root>/<stage>/...) whose runs have their own section and never enter Table 1: tuning trials
# (<root>/tune/<ste>-<bits>bit/<run>), the tuned retrainings and the weights × activations sweep.
TUNE, TUNED, WXA = "tune", "tuned", "wxa"
FLOAT_WEIGHTS = (None, "fp")  # wquant.name of the paper's runs (float weights): absent or fp


@dataclass(frozen=True)
class Run:
    """One run directory: its summary.json, config.yaml and provenance.json as plain dicts."""

    path: Path
    summary: dict
    config: dict = field(default_factory=dict)
    provenance: dict = field(default_factory=dict)
    stage: tuple[
        str, ...
    ] = ()  # the folders between the report's ROOT and the run dir, e.g. ("tune", "relu-2bit")

    def __getitem__(self, key: str):
        return self.summary.get(key)

    @property
    def status(self) -> str:
        """finished, diverged, failed or interrupted (older summaries carry only ``diverged``)."""
        return self["status"] or ("diverged" if self["diverged"] else "finished")

    @property
    def kind(self) -> str:
        """Which report section the run belongs to: two_layer, fig2, fig4, tune, tuned, wxa, fp or table1.

        From summary fields, the weight quantizer and the stage dir; float-weight runs outside the tune, tuned
        and wxa stage dirs are sorted as before weights could be quantized.
        """
        if self["model"] == "two_layer" or self["data"] == "gaussian":
            return "two_layer"
        if self["experiment"] in (FIG2, FIG4):
            return "fig2" if self["experiment"] == FIG2 else "fig4"
        if TUNE in self.stage:
            return "tune"
        if TUNED in self.stage or self["tag"] == TUNED:
            return "tuned"
        if WXA in self.stage or self.weights[0] not in FLOAT_WEIGHTS:
            return "wxa"
        return "fp" if self["bits"] is None else "table1"

    @property
    def weights(self) -> tuple[str, int | None]:
        """(weight quantizer, weight bits): ("fp", None) for float weights; a binary quantizer has 1 bit."""
        node = self.config.get("wquant") or {}
        name = node.get("name", self["wquant"]) or "fp"
        bits = node.get("bits", self["wbits"])
        return name, 1 if name == "binary" else (None if bits is None else int(bits))

    @property
    def wa(self) -> str:
        """Weight and activation bits as one label: w4a2, w1a2 (binary), wta2 (ternary), wfa2 (float), w2af."""
        from src.quant.weights import weight_token  # the run name's weight token: one home

        return f"w{weight_token(*self.weights) or 'f'}a{'f' if self['bits'] is None else self['bits']}"

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
    runs, bad, root = [], [], Path(root)
    dirs = {p.parent for name in ("summary.json", "provenance.json") for p in root.rglob(name)}
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
        runs.append(Run(run_dir, summary, config, prov, run_dir.relative_to(root).parts[:-1]))
    return runs, bad


def read_curves(run: Run) -> pd.DataFrame:
    """metrics.csv indexed by epoch (0 = the starting point, e = after epoch e); empty when there is none."""
    path = run.path / "metrics.csv"
    if not path.is_file():
        return pd.DataFrame(index=pd.Index([], name="epoch"))
    return pd.read_csv(path).set_index("epoch").sort_index()
