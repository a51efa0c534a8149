"""Table 1: the paper's values beside ours (mean ± std over seeds, n shown), the differences, the ordering check.

A cell averages runs that differ in their seed alone: ``protocol_split`` keeps the Table-1 runs that follow
their row's protocol, and ``cells`` groups them by every other knob (pandas groupby). A little over 300 lines: the
cells and their rendering in the paper's layout are one table, read together.
"""

from __future__ import annotations

import math
import statistics
from collections import Counter
from dataclasses import dataclass

import pandas as pd

from src.paper import PAPER_STES, TABLE1, protocol_gaps
from src.quant.ste import STES  # the registry: one home for STE names and their order
from src.report.frame import PROTOCOL, STE_KNOBS, VARIANT_DEFAULTS, run_table
from src.report.runs import Run

STE_LABELS = {"identity": "identity", "relu": "vanilla ReLU", "clipped_relu": "clipped ReLU"}
NAMES = {"mnist": "MNIST", "cifar10": "CIFAR10", "lenet5": "LeNet5", "vgg11": "VGG11", "resnet20": "ResNet20"}
DEEP = {
    "vgg11",
    "resnet20",
}  # the paper's ordering claim is for the deeper nets (Yin et al. 2019, §1.2, §4.1)
METRIC_INDEX = {"train_loss": 0, "val_acc": 1}  # position in TABLE1's pairs
SIDE_KINDS = ("tune", "tuned", "wxa", "settle")  # Run.kind of runs with their own section, never in Table 1
Key = tuple  # (data, model, bits) then the row's non-default variant knobs, e.g. ("cifar10", "vgg11", 2, "pact")


def _null(x) -> bool:
    return x is None or (not isinstance(x, (list, tuple, str)) and pd.isna(x))


def row_key(run: pd.Series) -> Key:
    """(data, model, bits, *variant): a non-default alpha_mode by its value, other variant knobs as k=v."""
    bits = None if _null(run["bits"]) else int(run["bits"])
    extra = [
        (str(run[k]) if k == "alpha_mode" else f"{k}={run[k]}")
        for k, default in VARIANT_DEFAULTS.items()
        if not _null(run[k]) and run[k] != default
    ]
    return (run["data"], run["model"], bits, *extra)


def ste_column(run: pd.Series) -> str:
    """The STE's registry name, with its hyper-parameters when set: 'leaky_clipped_relu (eps=0.1)'."""
    params = [f"{k[4:]}={run[k]}" for k in STE_KNOBS[1:] if not _null(run[k])]
    return f"{run['ste']} ({', '.join(params)})" if params else str(run["ste"])


def why_apart(run: pd.Series, majority: pd.Series | None) -> str:
    """Why a Table-1 run is kept out of the cells ('' when it follows its row's protocol)."""
    if run["status"] in ("failed", "interrupted"):
        return f"{run['status']}: {run['reason']}"
    if run["init"] == "scratch":
        return "started from scratch, not from an FP checkpoint"
    differ = [f"{k} {run[k]} (row: {majority[k]})" for k in PROTOCOL if str(run[k]) != str(majority[k])]
    if differ:
        return "not the row's majority protocol: " + ", ".join(differ)
    if run["status"] == "finished" and run["epochs"] < run["max_epochs"]:
        return f"stopped at epoch {run['epochs']} of {run['max_epochs']} without diverging"
    return ""


def protocol_split(table: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(runs in Table 1's cells, other runs with ``why``): quantized runs that follow their row's protocol;
    the others are the Table-1 runs that do not, and every failed run but those of ``SIDE_KINDS``.

    The protocol of a (data, model, bits) row is the schedule/epochs/subsets most of its runs share.
    """
    own_section = table["kind"].isin(
        SIDE_KINDS
    )  # a W×A or tuning run, failed or not, goes to its own section
    t1 = table[(table["kind"] == "table1") | ((table["status"] == "failed") & ~own_section)].copy()
    t1["key"] = [row_key(r) for _, r in t1.iterrows()]
    t1["column"] = [ste_column(r) for _, r in t1.iterrows()]
    t1["protocol"] = ["|".join(str(r[k]) for k in PROTOCOL) for _, r in t1.iterrows()]
    ran = t1[t1["status"].isin(["finished", "diverged"])]
    majority = {
        base: ran.loc[group.index[group["protocol"] == group["protocol"].mode()[0]][0]]
        for base, group in ran.groupby(["data", "model", "bits"], dropna=False)
    }
    t1["why"] = [why_apart(r, majority.get(r["key"][:3])) for _, r in t1.iterrows()]
    return t1[t1["why"] == ""], t1[t1["why"] != ""]


@dataclass(frozen=True)
class Cell:
    """One table cell over seeds: finite values of the finished runs, how many diverged, repeated seeds."""

    values: tuple[float, ...]
    n_runs: int
    diverged: int
    repeats: tuple[str, ...] = ()  # 'seed 0 ×2': the newest of those runs counts, the others do not
    best_epochs: tuple[int, ...] = ()
    examples: int | None = None  # test examples each value was scored on: the binomial SE of a single run

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float | None:
        return statistics.fmean(self.values) if self.values else None

    @property
    def std(self) -> float | None:
        """Sample std (n − 1 in the denominator) over seeds; None with fewer than two values."""
        return statistics.stdev(self.values) if self.n > 1 else None


def newest_per_seed(runs: pd.DataFrame, by: tuple[str, ...] = ()) -> pd.DataFrame:
    """The newest run (last start, then path) per seed within ``by``: a repeated seed counts once."""
    order = runs.sort_values(["started", "path"], na_position="first")
    return order.groupby([*by, "seed"], dropna=False).tail(1)


def make_cell(group: pd.DataFrame, metric: str) -> Cell:
    """A Cell of ``metric`` over a group of runs differing in seed alone; a repeated seed counts once (newest)."""
    newest = newest_per_seed(group)
    counts = group.groupby("seed", dropna=False).size()
    done = newest[newest["status"] == "finished"]
    return Cell(
        values=tuple(float(v) for v in done[metric] if not _null(v) and math.isfinite(v)),
        n_runs=len(newest),
        diverged=int((newest["status"] == "diverged").sum()),
        repeats=tuple(f"seed {s} ×{k}" for s, k in counts.items() if k > 1),
        best_epochs=tuple(int(e) for e in done["best_epoch"].dropna()),
        examples=None if done.empty or done["val_examples"].isna().any() else int(done["val_examples"].min()),
    )


def cells(table: pd.DataFrame, metric: str, column: str = "column") -> dict[Key, dict[str, Cell]]:
    """Cells of ``metric`` per row key and ``column`` (tables from ``protocol_split`` or with those columns)."""
    out: dict[Key, dict[str, Cell]] = {}
    for (key, col), group in table.groupby(["key", column], sort=False):
        out.setdefault(key, {})[col] = make_cell(group, metric)
    return out


def table1(runs: list[Run], metric: str = "val_acc") -> dict[Key, dict[str, Cell]]:
    """Table 1's cells for ``metric`` (val_acc, val_acc_best or train_loss) over the protocol Table-1 runs."""
    return cells(protocol_split(run_table(runs))[0], metric)


def row_order(keys) -> list[Key]:
    """The paper's six rows first, in its order, then any other row (variants, other nets) sorted."""
    others = sorted((k for k in keys if k not in TABLE1), key=lambda k: tuple(map(str, k)))
    return list(TABLE1) + others


def ste_order(found) -> list[str]:
    """The paper's three STEs, then the other registry STEs found (registry order), then unknown names."""
    rest = [s for s in STES if s in found and s not in PAPER_STES]
    return [*PAPER_STES, *rest, *sorted(set(found) - set(PAPER_STES) - set(rest), key=str)]


def fmt(x: float | None, metric: str, sign: bool = False) -> str:
    """Format like the paper: accuracies with 2 decimals; losses 2 significant digits (a e-k) below 0.1."""
    if x is None:
        return "—"
    if metric != "train_loss" or x == 0 or abs(x) >= 0.1:
        return f"{x:+.2f}" if sign else f"{x:.2f}"
    mantissa, exp = f"{x:{'+' if sign else ''}.1e}".split("e")
    return f"{mantissa}e{int(exp)}"


def fmt_cell(cell: Cell | None, metric: str) -> str:
    """Ours: 'mean ± std (n=k)', 'diverged (n=k)', with 'diverged j of k' and repeated seeds ('seed 0 ×2')."""
    if cell is None or cell.n_runs == 0:
        return "—"
    if cell.n == 0:
        all_diverged = cell.diverged == cell.n_runs
        text = f"{'diverged' if all_diverged else 'no value'} (n={cell.n_runs})"
    else:
        spread = f" ± {fmt(cell.std, metric)}" if cell.std is not None else ""
        text = f"{fmt(cell.mean, metric)}{spread} (n={cell.n}{single_run_ci(cell, metric)})"
        if metric == "val_acc_best" and cell.best_epochs:
            lo, hi = min(cell.best_epochs), max(cell.best_epochs)
            text += f" @ epoch {lo}" + (f"–{hi}" if hi > lo else "")
        text += f"; diverged {cell.diverged} of {cell.n_runs}" if cell.diverged else ""
    return text + "".join(f"; {r}" for r in cell.repeats)


def single_run_ci(cell: Cell, metric: str) -> str:
    """', 95 % CI ±0.24 binomial' for one run's accuracy (its test-set size); '' otherwise."""
    if cell.n != 1 or "acc" not in metric or not cell.examples:
        return ""
    p = cell.mean / 100
    return f", 95 % CI ±{196 * math.sqrt(p * (1 - p) / cell.examples):.2f} binomial"


def paper_value(key: Key, ste: str, metric: str) -> float | None:
    """The paper's Table 1 value, or None where the paper has no such cell."""
    pair = TABLE1.get(key, {}).get(ste)
    return pair[METRIC_INDEX[metric]] if pair and metric in METRIC_INDEX else None


def row_label(key: Key) -> list[str]:
    """Dataset, Network, BitWidth as the paper writes them; a variant row's knobs in brackets: '2 (pact)'."""
    data, model, bits, *variant = key
    width = "FP" if bits is None else str(bits)
    return [
        NAMES.get(data, str(data)),
        NAMES.get(model, str(model)),
        width + (f" ({', '.join(variant)})" if variant else ""),
    ]


def md_table(header: list[str], rows: list[list[str]]) -> str:
    """A markdown table; '|' inside a cell is escaped."""
    lines = [header, ["---"] * len(header), *rows]
    return "\n".join("| " + " | ".join(str(c).replace("|", "\\|") for c in line) + " |" for line in lines)


def render_table1(
    data: dict[Key, dict[str, Cell]], metric: str, ours_only: bool = False, paper: bool = True
) -> str:
    """Table 1 for one metric: per STE the paper's value, ours (mean ± std, n) and ours − paper; every paper row,
    or with ``ours_only`` the rows we ran. ``paper=False`` (runs off the paper's protocol): ours alone, no Δ."""
    stes = ste_order({ste for row in data.values() for ste in row})
    parts = ("paper", "ours", "Δ") if paper else ("ours",)
    header = ["Dataset", "Network", "BitWidth"]
    header += [f"{STE_LABELS.get(s, s)} {part}" for s in stes for part in parts]
    rows = []
    for key in row_order(data):
        if (ours_only or not paper) and key not in data:
            continue
        row = row_label(key)
        for ste in stes:
            cell, published = data.get(key, {}).get(ste), paper_value(key, ste, metric)
            if not paper:
                row.append(fmt_cell(cell, metric))
                continue
            diff = cell.mean - published if cell and cell.mean is not None and published is not None else None
            row += [fmt(published, metric), fmt_cell(cell, metric), fmt(diff, metric, sign=True)]
        rows.append(row)
    return md_table(header, rows)


def paper_split(in_table: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, str]:
    """(runs on the paper's protocol, runs on a reduced one, what differs: '5 epochs (paper 200); …').

    Only the first get a Δ against the paper; the others are compared among themselves."""
    gaps = [protocol_gaps(r) for r in in_table["run"]]
    paper = in_table[[not g for g in gaps]]
    reduced = in_table[[bool(g) for g in gaps]]
    counts = Counter(x for g in gaps for x in g)
    what = "; ".join(
        f"{x}" + (f" ({k} of {len(reduced)} runs)" if k < len(reduced) else "") for x, k in counts.items()
    )
    return paper, reduced, what


def render_best(data: dict[Key, dict[str, Cell]]) -> str:
    """Table 1a′: our best validation accuracy over epochs, and the epochs it was reached at (our rows only)."""
    stes = ste_order({ste for row in data.values() for ste in row})
    rows = [
        row_label(key) + [fmt_cell(data[key].get(s), "val_acc_best") for s in stes]
        for key in row_order(data)
        if key in data
    ]
    return md_table(["Dataset", "Network", "BitWidth", *(STE_LABELS.get(s, s) for s in stes)], rows)


def render_fp(table: pd.DataFrame) -> str:
    """Our full-precision pretraining (bits null) per (data, model): training loss and validation accuracy."""
    fp = table[table["kind"] == "fp"].assign(key=lambda t: [row_key(r) for _, r in t.iterrows()], column="fp")
    loss, acc = (cells(fp, m) for m in ("train_loss", "val_acc"))
    rows = [
        row_label(key)[:2] + [fmt_cell(loss[key]["fp"], "train_loss"), fmt_cell(acc[key]["fp"], "val_acc")]
        for key in sorted(loss, key=lambda k: tuple(map(str, k)))
    ]
    return md_table(["Dataset", "Network", "training loss", "validation accuracy (%)"], rows)


def render_apart(others: pd.DataFrame, diverged: pd.DataFrame) -> str:
    """'Other runs (not in Table 1)' with the reason, then the diverged runs (counted, out of the means)."""
    parts = []
    for title, runs, why in (
        ("### Other runs (not in Table 1)", others, "why"),
        ("### Diverged runs (counted in their cells, left out of the means)", diverged, "reason"),
    ):
        rows = [
            [
                r["run_name"],
                *row_label(r["key"]),
                str(r["ste"]),
                str(r["seed"]),
                str(r[why]),
                f"`{r['path']}`",
            ]
            for _, r in runs.iterrows()
        ]
        header = ["run", "Dataset", "Network", "BitWidth", "STE", "seed", "why", "path"]
        parts += [f"{title}\n\n{md_table(header, rows)}\n"] if rows else []
    return "\n".join(parts)


def holds(means: dict[str, float | None]) -> bool | None:
    """clipped_relu ≥ relu > identity on the given means; None when one of the three is missing."""
    c, r, i = (means.get(s) for s in ("clipped_relu", "relu", "identity"))
    return None if None in (c, r, i) else c >= r > i


def render_ordering(data: dict[Key, dict[str, Cell]]) -> str:
    """The ordering check: ✓ / ✗ per row with our mean accuracies, and the paper's verdict for comparison."""
    mark = {True: "✓", False: "✗", None: "—"}
    rows = []
    for key in (k for k in row_order(data) if k in data):
        ours = {s: (c.mean if (c := data[key].get(s)) else None) for s in PAPER_STES}
        paper = {s: paper_value(key, s, "val_acc") for s in PAPER_STES} if key in TABLE1 else {}
        scope = "claim (deep net)" if key[1] in DEEP else "for information"
        means = [fmt(ours[s], "val_acc") for s in ("clipped_relu", "relu", "identity")]
        rows.append(
            [*row_label(key), *means, mark[holds(ours)], mark[holds(paper) if paper else None], scope]
        )
    header = ["Dataset", "Network", "BitWidth", "clipped ReLU", "vanilla ReLU", "identity"]
    return md_table(header + ["ours: clipped ≥ ReLU > identity", "paper's numbers", "scope"], rows)
