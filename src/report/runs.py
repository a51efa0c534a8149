"""Runs as the report reads them (src/runs is the reader), sorted into report sections, and their curves."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import pandas as pd

from src.quant.weights import weight_token  # the run name's weight token: one home
from src.runs import record

# The experiment names the pipeline gives the instability runs (conf/experiment/*.yaml)
FIG2, FIG4 = "fig2_identity_repelled", "fig4_relu_2bit"
# Stage dirs (<root>/<stage>/...) whose runs have their own section and never enter Table 1: tuning trials
# (<root>/tune/<ste>-<bits>bit/<run>), the tuned retrainings, the weights × activations sweep and the Table-1 minima
# trained on until they plateau before Figures 2 and 4 start from them (<root>/settle/<run>).
TUNE, TUNED, WXA, SETTLE, SETTLED = "tune", "tuned", "wxa", "settle", "settled"  # stage dirs; tags
FLOAT_WEIGHTS = (None, "fp")  # wquant.name of the paper's runs (float weights): absent or fp
# Archived runs' curves (src.report writes curves.csv beside runs.csv): what the figures, the comparison's curves
# and the verdicts of Figures 2 and 4 read; per-layer diagnostics stay with the run dir.
CURVES = "curves.csv"
CURVE_COLUMNS = ("step", "val/acc", "val/loss", "train/loss", "lr")
KEY = ["run_name", "started"]  # a run in curves.csv, as in runs.csv


@dataclass(frozen=True)
class Run(record.Run):
    """A run as the report sorts it: src/runs' record plus its report section (``kind``) and W×A label."""

    @property
    def archived_from(self) -> str | None:
        """The earlier report's runs.csv this run was read from (its run dir is gone); None for a run dir."""
        return self.provenance.get("archived_from")

    @property
    def kind(self) -> str:
        """Which report section the run belongs to: two_layer, fig2, fig4, settle, tune, tuned, wxa, fp or table1.

        From summary fields, the weight quantizer and the stage dir; float-weight runs outside the tune, tuned,
        wxa and settle stage dirs are sorted as before weights could be quantized. A settle run shows only as
        the start of a figure run.
        """
        if self["model"] == "two_layer" or self["data"] == "gaussian":
            return "two_layer"
        if self["experiment"] in (FIG2, FIG4):
            return "fig2" if self["experiment"] == FIG2 else "fig4"
        if SETTLE in self.stage or self["tag"] == SETTLED:
            return "settle"
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
        return f"w{weight_token(*self.weights) or 'f'}a{'f' if self['bits'] is None else self['bits']}"


def collect_runs(root: Path, exclude: Path | None = None) -> list[Run]:
    """Every run dir under root whose files parse (interrupted ones included), sorted by path."""
    return scan([root], exclude)[0]


def scan(roots, exclude: Path | None = None) -> tuple[list[Run], list[str]]:
    """The runs under the given folders (src/runs.find_runs), and one line per run dir that could not be read."""
    runs, problems = record.find_runs([roots] if isinstance(roots, str | Path) else roots, exclude)
    return [Run(r.path, r.summary, r.config, r.provenance, r.stage) for r in runs], problems


def read_curves(run: Run) -> pd.DataFrame:
    """metrics.csv indexed by epoch (0 = the starting point, e = after epoch e), or for an archived run its rows of
    the curves.csv beside its runs.csv; empty when there is none or it cannot be read (``curve_problems`` names
    it)."""
    try:
        archived = run.provenance.get("archived_from")  # also src.runs' Run (the pipeline's plateau rule)
        if archived:
            kept = Path(archived).with_name(CURVES)
            curve = _kept_curves(kept, _stamp(kept)).get((run["run_name"], run.started), _no_curve())
            return curve.copy()  # the cached frame stays as read (figure sections write epoch 0's loss)
        return _curves(run.path / "metrics.csv")
    except ValueError:
        return _no_curve()


def _no_curve() -> pd.DataFrame:
    return pd.DataFrame(index=pd.Index([], name="epoch"))


def _stamp(path: Path) -> tuple[int, int] | None:
    """What tells one version of a file from the next (a report rewrites curves.csv after reading it)."""
    if not path.is_file():
        return None
    stat = path.stat()
    return stat.st_mtime_ns, stat.st_size


@lru_cache(maxsize=8)
def _kept_curves(path: Path, stamp) -> dict[tuple[str, str], pd.DataFrame]:
    """curves.csv as {(run name, start time): its curve}; empty when there is no file."""
    if stamp is None:
        return {}
    table = _curves(path)
    return {key: c.drop(columns=KEY) for key, c in table.groupby(KEY)}


def kept_curves(runs: list[Run]) -> pd.DataFrame:
    """curves.csv: each run's CURVE_COLUMNS per epoch, keyed by run name and start time, so that a report made
    from the runs.csv written beside it, once the run dirs are gone, still draws the curves and judges the
    figures."""
    frames = []
    for run in runs:
        curve = read_curves(run)
        columns = [c for c in CURVE_COLUMNS if c in curve]
        if len(curve) and columns:
            frames.append(curve[columns].assign(run_name=run["run_name"], started=run.started).reset_index())
    table = pd.concat([pd.DataFrame(columns=[*KEY, "epoch"]), *frames], ignore_index=True)
    return table[[*KEY, "epoch", *(c for c in CURVE_COLUMNS if c in table)]]


def _curves(path: Path) -> pd.DataFrame:
    if not path.is_file():
        return _no_curve()
    try:
        curve = pd.read_csv(path)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: unreadable ({type(err).__name__})") from None
    if "epoch" not in curve or not pd.api.types.is_numeric_dtype(curve["epoch"]):
        raise ValueError(f"{path}: no numeric epoch column (truncated or not a metrics file)")
    return curve.set_index("epoch").sort_index()


def curve_problems(runs: list[Run]) -> list[str]:
    """One line per run whose metrics.csv exists but cannot be read (its curves are left out of the figures)."""
    problems = []
    for run in runs:
        try:
            _curves(run.path / "metrics.csv")
        except ValueError as err:
            problems.append(f"{err}; its curves are left out")
    return problems


def at(curve: pd.DataFrame, epoch: int, metric: str) -> float | None:
    """One logged value, or None."""
    if epoch not in curve.index or metric not in curve:
        return None
    value = curve.loc[epoch, metric]
    return None if pd.isna(value) else float(value)
