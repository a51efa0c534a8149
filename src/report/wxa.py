"""Weights × activations: final accuracy per weight quantizer (rows) and activation bit width (columns).

The W×A runs are Run.kind ``wxa``: every weight-quantized run, and the float-weight runs of the ``wxa`` stage dir
(the sweep's float row). A cell averages runs that differ in their seed alone, as Table 1's cells do.
"""

from __future__ import annotations

import math

import pandas as pd

from src.report.provenance import counted, hours
from src.report.table1 import Cell, cells, fmt_cell, md_table, row_label, ste_column

TERNARY_BITS = 1.58  # log2(3): where ternary weights sort between 2 bits and binary


def weight_row(name: str, bits, knobs: str = "") -> tuple[float, str]:
    """(sort rank, label) of a weight quantizer: float first, then fewer and fewer bits (rank: −bits); ``knobs``
    (e.g. 'scale=lsq') is appended in brackets."""
    if name == "fp":
        rank, label = -math.inf, "float"
    elif name == "ternary":
        rank, label = -TERNARY_BITS, "ternary"
    elif pd.isna(bits):
        rank, label = math.inf, str(name)  # a quantizer without bits: after the others
    else:
        rank, label = -float(bits), f"{bits}-bit" + ("" if name == "uniform" else f" ({name})")
    return (rank, f"{label} ({knobs})" if knobs else label)


def knob_text(run, runs: list) -> str:
    """The wquant settings besides name and bits (scale, ste, first_last, ...) that differ among ``runs`` with the
    same quantizer as ``run``, as 'scale=lsq': they tell rows apart ('4-bit (scale=lsq)', '4-bit (scale=lloyd)')."""
    same = [r.config.get("wquant") or {} for r in runs if r.weights == run.weights]
    keys = dict.fromkeys(k for node in same for k in node if k not in ("_target_", "name", "bits"))
    own = run.config.get("wquant") or {}
    return ", ".join(f"{k}={own.get(k)}" for k in keys if len({str(node.get(k)) for node in same}) > 1)


def act_column(bits) -> tuple[float, str]:
    """(sort rank, label) of an activation bit width: float first, then fewer and fewer bits."""
    return (-math.inf, "A float") if pd.isna(bits) else (-float(bits), f"A {bits}-bit")


def wxa_cells(table: pd.DataFrame, metric: str = "val_acc") -> dict[tuple, dict[tuple, dict[str, Cell]]]:
    """{(data, model, STE): {weight row: {activation column: Cell}}} over the W×A runs; rows and columns are
    (sort rank, label) pairs as ``weight_row`` and ``act_column`` give them."""
    mine = table[table["kind"] == "wxa"]
    if mine.empty:
        return {}
    mine = mine.assign(
        key=[
            (
                r["data"],
                r["model"],
                ste_column(r),
                weight_row(r["wquant"], r["wbits"], knob_text(r["run"], list(mine["run"]))),
            )
            for _, r in mine.iterrows()
        ],
        column=[act_column(b) for b in mine["bits"]],
    )
    out: dict[tuple, dict[tuple, dict[tuple, Cell]]] = {}
    for key, row in cells(mine, metric).items():
        out.setdefault(key[:3], {})[key[3]] = row
    return out


def render_wxa(grid: dict[tuple, dict[tuple, Cell]]) -> str:
    """One W×A table: weight rows, activation columns (each float first), cells mean ± std (n)."""
    columns = sorted({c for row in grid.values() for c in row})
    rows = [[w[1], *(fmt_cell(grid[w].get(c), "val_acc") for c in columns)] for w in sorted(grid)]
    return md_table(["weights", *(c[1] for c in columns)], rows)


def wquant_text(node: dict | None) -> str:
    """A run's wquant config node as 'name=binary, bits=1, <the others in config order>'."""
    if not node:
        return "float (no wquant)"
    keys = ["name", "bits", *(k for k in node if k not in ("name", "bits") and not k.startswith("_"))]
    return ", ".join(f"{k}={node.get(k)}" for k in keys)


def caption(runs: pd.DataFrame) -> str:
    """What ran, from the runs: STE, epochs, seeds, start, weight quantizer configs, wall time."""
    wall = runs["wall_time_s"].fillna(0)
    configs = counted(wquant_text(r.config.get("wquant")) for r in runs["run"])
    return (
        f"*Cells: final-epoch validation top-1 (%), mean ± sample std over seeds (n = finished runs); labels in "
        f"runs.csv's `wa` column. STE: {counted(runs['column'])}. Epochs run / max: "
        f"{counted(f'{e} / {m}' for e, m in zip(runs['epochs'], runs['max_epochs'], strict=True))}. Seeds: "
        f"{', '.join(map(str, sorted(runs['seed'].dropna().unique())))}. Initialised from: {counted(runs['init'])}. Weight "
        f"quantizers: {configs}. Wall time: {hours(wall.sum())} summed over {len(runs)} runs, "
        f"{hours(wall.mean())} per run on average.*\n"
    )


def wxa_tables(table: pd.DataFrame) -> list[tuple[str, str]]:
    """(title, table and caption) per (data, model, STE) of the W×A runs."""
    mine = table[table["kind"] == "wxa"]
    mine = mine.assign(column=[ste_column(r) for _, r in mine.iterrows()])
    blocks = []
    for (data, model, ste), grid in wxa_cells(table).items():
        group = mine[(mine["data"] == data) & (mine["model"] == model) & (mine["column"] == ste)]
        net = " ".join(row_label((data, model, None))[:2])
        blocks.append((f"{net}, STE {ste}", f"{render_wxa(grid)}\n\n{caption(group)}"))
    return blocks


def wxa_section(table: pd.DataFrame) -> str:
    """'Weights × activations': per (data, model, STE) the W×A table and its caption; the unfinished runs."""
    mine = table[table["kind"] == "wxa"]
    if mine.empty:
        return "No weights × activations runs (quantized weights or stage dir `wxa`).\n"
    parts = ["## Weights × activations\n"] + [f"### {title}\n\n{body}" for title, body in wxa_tables(table)]
    unfinished = mine[~mine["status"].isin(["finished", "diverged"])]
    parts += [
        f"- ⚠ `{r['run_name']}` ({r['wa']}): {r['status']}: {r['reason']}" for _, r in unfinished.iterrows()
    ]
    return "\n".join(parts) + "\n"
