"""Table 1: the paper's values beside ours (mean ± std over seeds, n shown), the differences, the ordering check."""

from __future__ import annotations

import statistics
from collections import defaultdict
from dataclasses import dataclass

from src.report.runs import Run

# PAPER.md §6.1, Table 1 verbatim: (data, model, bits) -> ste -> (final training loss, validation accuracy %)
# one row per line, in the paper's layout
# fmt: off
PAPER_TABLE1: dict[tuple[str, str, int], dict[str, tuple[float, float]]] = {
    ("mnist", "lenet5", 2):     {"identity": (2.6e-2, 98.49), "relu": (5.1e-3, 99.24), "clipped_relu": (5.4e-3, 99.23)},
    ("mnist", "lenet5", 4):     {"identity": (6.0e-3, 98.98), "relu": (9.0e-4, 99.32), "clipped_relu": (8.8e-4, 99.24)},
    ("cifar10", "vgg11", 2):    {"identity": (0.19, 86.58),   "relu": (0.10, 88.69),   "clipped_relu": (0.02, 90.92)},
    ("cifar10", "vgg11", 4):    {"identity": (3.1e-2, 90.19), "relu": (1.5e-3, 92.01), "clipped_relu": (1.3e-3, 92.08)},
    ("cifar10", "resnet20", 2): {"identity": (1.56, 46.52),   "relu": (1.50, 48.05),   "clipped_relu": (0.24, 88.39)},
    ("cifar10", "resnet20", 4): {"identity": (1.38, 54.16),   "relu": (0.25, 86.59),   "clipped_relu": (0.04, 91.24)},
}
# fmt: on
PAPER_STES = ("identity", "relu", "clipped_relu")
STE_LABELS = {"identity": "identity", "relu": "vanilla ReLU", "clipped_relu": "clipped ReLU"}
NAMES = {"mnist": "MNIST", "cifar10": "CIFAR10", "lenet5": "LeNet5", "vgg11": "VGG11", "resnet20": "ResNet20"}
DEEP = {"vgg11", "resnet20"}  # the paper's ordering claim is for the deeper nets (§1.2, §4.1)
METRIC_INDEX = {"train_loss": 0, "val_acc": 1}  # position in PAPER_TABLE1's pairs
Key = tuple[str, str, "int | None"]


@dataclass(frozen=True)
class Cell:
    """One table cell over seeds: the finite values of the runs that did not diverge, and how many diverged."""

    values: tuple[float, ...]
    n_runs: int
    diverged: int

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


def cells(runs: list[Run], metric: str, column=lambda run: run["ste"]) -> dict[Key, dict[str, Cell]]:
    """Group runs by (data, model, bits) and ``column`` (the STE by default) into Cells of ``metric``."""
    groups: dict[Key, dict[str, list[Run]]] = defaultdict(lambda: defaultdict(list))
    for run in runs:
        groups[(run["data"], run["model"], run["bits"])][column(run)].append(run)
    return {
        key: {
            col: Cell(
                values=tuple(v for r in group if (v := r.value(metric)) is not None),
                n_runs=len(group),
                diverged=sum(bool(r["diverged"]) for r in group),
            )
            for col, group in by_col.items()
        }
        for key, by_col in groups.items()
    }


def table1(runs: list[Run], metric: str = "val_acc") -> dict[Key, dict[str, Cell]]:
    """Table 1's cells for ``metric`` (val_acc or train_loss) over the quantized Table-1 runs."""
    return cells([r for r in runs if r.kind == "table1"], metric)


def row_order(keys) -> list[Key]:
    """The paper's six rows first, in its order, then any other (data, model, bits) sorted."""
    others = sorted((k for k in keys if k not in PAPER_TABLE1), key=lambda k: tuple(map(str, k)))
    return list(PAPER_TABLE1) + others


def ste_order(found) -> list[str]:
    """The paper's three STEs, then the other registry STEs found (registry order), then unknown names."""
    from src.quant.ste import STES  # the registry: one home for STE names and their order

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
    """Ours: 'mean ± std (n=k)', 'mean (n=1)', 'diverged (n=k)', with 'j of k diverged' when only some did."""
    if cell is None or cell.n_runs == 0:
        return "—"
    if cell.n == 0:
        return (
            f"diverged (n={cell.n_runs})" if cell.diverged == cell.n_runs else f"no value (n={cell.n_runs})"
        )
    spread = f" ± {fmt(cell.std, metric)}" if cell.std is not None else ""
    text = f"{fmt(cell.mean, metric)}{spread} (n={cell.n})"
    return text + (f"; diverged {cell.diverged} of {cell.n_runs}" if cell.diverged else "")


def paper_value(key: Key, ste: str, metric: str) -> float | None:
    """The paper's Table 1 value, or None where the paper has no such cell."""
    pair = PAPER_TABLE1.get(key, {}).get(ste)
    return pair[METRIC_INDEX[metric]] if pair else None


def row_label(key: Key) -> list[str]:
    """Dataset, Network, BitWidth as the paper writes them."""
    data, model, bits = key
    return [NAMES.get(data, str(data)), NAMES.get(model, str(model)), "FP" if bits is None else str(bits)]


def md_table(header: list[str], rows: list[list[str]]) -> str:
    """A markdown table; cells must not contain '|'."""
    lines = [header, ["---"] * len(header), *rows]
    return "\n".join("| " + " | ".join(line) + " |" for line in lines)


def render_table1(runs: list[Run], metric: str) -> str:
    """Table 1 for one metric: per STE the paper's value, ours (mean ± std, n) and ours − paper."""
    data = table1(runs, metric)
    stes = ste_order({ste for row in data.values() for ste in row})
    header = ["Dataset", "Network", "BitWidth"]
    header += [f"{STE_LABELS.get(s, s)} {part}" for s in stes for part in ("paper", "ours", "Δ")]
    rows = []
    for key in row_order(data):
        row = row_label(key)
        for ste in stes:
            cell, paper = data.get(key, {}).get(ste), paper_value(key, ste, metric)
            diff = cell.mean - paper if cell and cell.mean is not None and paper is not None else None
            row += [fmt(paper, metric), fmt_cell(cell, metric), fmt(diff, metric, sign=True)]
        rows.append(row)
    return md_table(header, rows)


def render_fp(runs: list[Run]) -> str:
    """Our full-precision pretraining (bits null) per (data, model): training loss and validation accuracy."""
    fp = [r for r in runs if r.kind == "fp"]
    loss, acc = (cells(fp, m, column=lambda r: "fp") for m in ("train_loss", "val_acc"))
    rows = [
        row_label(key)[:2] + [fmt_cell(loss[key]["fp"], "train_loss"), fmt_cell(acc[key]["fp"], "val_acc")]
        for key in sorted(loss, key=lambda k: tuple(map(str, k)))
    ]
    return md_table(["Dataset", "Network", "training loss", "validation accuracy (%)"], rows)


def holds(means: dict[str, float | None]) -> bool | None:
    """clipped_relu ≥ relu > identity on the given means; None when one of the three is missing."""
    c, r, i = (means.get(s) for s in ("clipped_relu", "relu", "identity"))
    return None if None in (c, r, i) else c >= r > i


def ordering(runs: list[Run]) -> dict[Key, tuple[dict[str, float | None], bool | None, bool | None]]:
    """Per Table-1 row: our mean accuracies, whether our ordering holds, whether the paper's own numbers do."""
    data, out = table1(runs, "val_acc"), {}
    for key in row_order(data):
        if key not in data:
            continue
        ours = {s: (c.mean if (c := data[key].get(s)) else None) for s in PAPER_STES}
        paper = {s: paper_value(key, s, "val_acc") for s in PAPER_STES} if key in PAPER_TABLE1 else {}
        out[key] = (ours, holds(ours), holds(paper) if paper else None)
    return out


def render_ordering(runs: list[Run]) -> str:
    """The ordering check as a table: ✓ / ✗ per row with our mean accuracies, and the paper's for comparison."""
    mark = {True: "✓", False: "✗", None: "—"}
    rows = []
    for key, (ours, ok, paper_ok) in ordering(runs).items():
        scope = "claim (deep net)" if key[1] in DEEP else "for information"
        means = [fmt(ours[s], "val_acc") for s in ("clipped_relu", "relu", "identity")]
        rows.append([*row_label(key), *means, mark[ok], mark[paper_ok], scope])
    header = ["Dataset", "Network", "BitWidth", "clipped ReLU", "vanilla ReLU", "identity"]
    return md_table(header + ["ours: clipped ≥ ReLU > identity", "paper's numbers", "scope"], rows)
