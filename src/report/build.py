"""Assemble report.md from the run directories under a root; figures go beside it."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from src.report.diagnostics import diagnostics_section
from src.report.frame import run_table, write_runs_csv
from src.report.provenance import deviations, provenance_section
from src.report.runs import Run, scan
from src.report.sections import figure_section, table1_figures, two_layer_section
from src.report.table1 import (
    cells,
    protocol_split,
    render_apart,
    render_best,
    render_fp,
    render_ordering,
    render_table1,
)
from src.report.tuning import find_studies, tuning_section, tuning_table
from src.report.wxa import wxa_section, wxa_tables

GUIDE = (
    "This report compares our runs with Yin et al., ICLR 2019 (“Understanding Straight-Through Estimator in "
    "Training Activation Quantized Neural Nets”). Table 1 puts, for every (dataset, network, bit width) and STE, "
    "the paper's number beside ours: the mean ± sample standard deviation over the seeds that ran (n = runs "
    "with a finite value), and the difference ours − paper. Training loss is the last epoch's mean training loss "
    "and accuracy the final epoch's validation accuracy, as in the paper (the best epoch's is shown beside it); a "
    "run whose loss became non-finite shows as “diverged” with its reason and is left out of the mean; runs that "
    "do not follow their row's protocol are listed apart, never averaged. Every run is one row of runs.csv. The ordering check tests the paper's claim clipped ReLU ≥ ReLU > "
    "identity. Figures 2 and 4 show the instability of an STE at good minima, the two-layer section the theory "
    "figures and our runs of the paper's model. Beyond the paper, when their runs are there: weights × activations (quantized weights), the paper's schedule against a per-STE tuned one, and inside the STE (per-layer diagnostics, STE disagreement, the descent probe). Provenance says what ran where, with which code, libraries, "
    "data and epochs: read it before comparing any number with the paper."
)


def read_pipeline(root: Path, out: Path) -> dict:
    """pipeline.json at root (else the first one under root, outside ``out``); {} when there is none."""
    hits = (
        [root / "pipeline.json"]
        if (root / "pipeline.json").is_file()
        else sorted(root.rglob("pipeline.json"))
    )
    hits = [p for p in hits if not p.resolve().is_relative_to(out.resolve())]
    try:
        return json.loads(hits[0].read_text()) if hits else {}
    except ValueError:
        return {"data_note": f"pipeline.json at {hits[0]} did not parse"}


def off_protocol(runs: list[Run]) -> bool:
    """Whether any Table-1 or instability run deviates from the paper's epochs or data (smoke runs do)."""
    runs = [r for r in runs if r.status in ("finished", "diverged")]
    groups = {(r.kind, r["model"]) for r in runs if r.kind in ("table1", "fig2", "fig4")}
    return any(
        deviations([r for r in runs if (r.kind, r["model"]) == g], *g).startswith("**no**") for g in groups
    )


def header(root: Path, runs: list[Run], profile: str) -> str:
    """Title, profile, date and the reading guide; a warning first when the runs are not the paper's protocol."""
    date = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "# STE Lab report: Yin et al., ICLR 2019, reproduced\n",
        f"Profile: **{profile}** · generated {date} · {len(runs)} runs read from `{root}`\n",
    ]
    if off_protocol(runs):
        lines.append(
            "> ⚠ **Not the paper's protocol.** Some runs used fewer epochs or data subsets (see Provenance → "
            "Protocol actually run): their numbers show that the pipeline works, not the paper's results.\n"
        )
    return "\n".join(lines + [GUIDE, ""])


def table1_section(table: pd.DataFrame, out: Path) -> str:
    """Table 1a (final accuracy), 1a′ (best epoch), 1b (loss), 1c (our FP pretraining), runs kept apart, figures
    and the ordering check."""
    in_table, others = protocol_split(table)
    diverged = in_table[in_table["status"] == "diverged"]
    fp = table[table["kind"] == "fp"]
    fp_part = (
        "### Table 1c: full-precision starting points (ours; the paper reports none)\n\n"
        + render_fp(table)
        + "\n"
        if len(fp)
        else "No full-precision (bits null) runs.\n"
    )
    apart = render_apart(others, diverged)
    if in_table.empty:
        return "## Table 1\n\nNo quantized Table-1 runs in the protocol.\n\n" + fp_part + "\n" + apart
    acc = cells(in_table, "val_acc")
    return (
        "## Table 1\n\nCells: paper | ours, mean ± std (n) | Δ = ours − paper (Yin et al. 2019, §4.1, Table 1). "
        "A cell averages runs that differ in their seed alone; a repeated seed counts once (its newest run) and "
        "is flagged. Bit widths are activation bits; weights stay float.\n\n"
        "### Table 1a: validation accuracy (%), final epoch (the paper's protocol)\n\n"
        f"{render_table1(acc, 'val_acc')}\n\n"
        "### Table 1a′: best validation accuracy (%) over the epochs, and at which epoch (ours only)\n\n"
        f"{render_best(cells(in_table, 'val_acc_best'))}\n\n"
        f"### Table 1b: training loss\n\n{render_table1(cells(in_table, 'train_loss'), 'train_loss')}\n\n"
        f"{fp_part}\n{apart}\n{table1_figures(in_table, acc, out)}\n"
        "## Ordering check\n\nThe paper (Yin et al. 2019, §1.2, §4.1): clipped ReLU ≥ vanilla ReLU > identity "
        "on mean validation accuracy, claimed for the deeper VGG11 and ResNet20; other rows are shown for "
        f"information.\n\n{render_ordering(acc)}\n"
    )


def headline(root: Path, out: Path, profile: str) -> str:
    """For the README's Results section (written between markers by --readme): Table 1a's rows that ran, then the
    W×A tables and the paper-schedule-vs-tuned table when their runs are there (Table 1a alone when none ran)."""
    table = run_table(scan(root, exclude=out)[0])
    in_table, _ = protocol_split(table)
    extra = [f"Weights × activations, {title}:\n\n{body}" for title, body in wxa_tables(table)]
    tuned = tuning_table(table, in_table, find_studies(root, out)[0])
    extra += [f"Paper schedule vs tuned:\n\n{tuned}"] if tuned else []
    where = (
        f"full report with protocol, curves and provenance: [{out}/report.md]({out}/report.md). Generated by "
        f"`python -m src.report <runs> --out {out} --profile {profile} --readme README.md`."
    )
    if in_table.empty and extra:
        return f"Profile `{profile}`; {where}\n\n" + "\n".join(extra)
    acc = render_table1(cells(in_table, "val_acc"), "val_acc", ours_only=True)
    return (
        f"Validation top-1 (%), final epoch, paper | ours (mean ± std, n seeds) | Δ — profile `{profile}`; {where}"
        f"\n\n{acc}\n" + "".join(f"\n{part}" for part in extra)
    )


def write_headline(readme: Path, profile: str, text: str) -> None:
    """Replace the block between <!-- results:PROFILE --> and <!-- /results:PROFILE --> in ``readme``."""
    start, end = f"<!-- results:{profile} -->", f"<!-- /results:{profile} -->"
    doc = readme.read_text()
    if start not in doc or end not in doc:
        raise NoRuns(f"{readme} has no {start} … {end} block to fill")
    head, rest = doc.split(start, 1)
    readme.write_text(f"{head}{start}\n{text}{end}{rest.split(end, 1)[1]}")


class NoRuns(ValueError):
    """ROOT holds no run dir."""


def build_report(root: Path, out: Path | None = None, profile: str | None = None) -> Path:
    """Read every run under root and write report.md, runs.csv and the figures into out (default root/report)."""
    root = Path(root)
    out = Path(out) if out else root / "report"
    runs, bad = scan(root, exclude=out)
    if not runs:
        raise NoRuns(f"no runs under {root}")
    out.mkdir(parents=True, exist_ok=True)
    table = run_table(runs)
    write_runs_csv(table, out / "runs.csv")
    pipeline = read_pipeline(root, out)
    profile = profile or pipeline.get("profile") or "not stated (no --profile, no pipeline.json)"
    in_table = protocol_split(table)[0]
    sections = [
        header(root, runs, profile),
        table1_section(table, out),
        wxa_section(table),
        tuning_section(table, in_table, root, out),
        figure_section("fig2", runs, out),
        figure_section("fig4", runs, out),
        diagnostics_section(table, runs, out),
        two_layer_section(runs, root, out),
        provenance_section(runs, pipeline, profile, bad),
    ]
    path = out / "report.md"
    path.write_text("\n".join(sections))
    return path
