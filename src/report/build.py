"""Assemble report.md from the run directories under one or more folders; figures go beside it."""

from __future__ import annotations

import os
import re
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from src.report.archive import scan_all
from src.report.compare import compare_section
from src.report.diagnostics import diagnostics_section
from src.report.frame import run_table, write_runs_csv
from src.report.provenance import provenance_section
from src.report.runs import CURVES, Run, curve_problems, kept_curves
from src.report.sections import figure_section, table1_figures, two_layer_section, verdict_lines
from src.report.stability import minima_section
from src.report.table1 import (
    cells,
    paper_split,
    protocol_split,
    render_apart,
    render_best,
    render_fp,
    render_ordering,
    render_table1,
)
from src.report.tuning import find_studies, tuning_section, tuning_table
from src.report.wxa import wxa_section, wxa_tables
from src.runs import RunFileError, read_pipeline
from src.runs.index import PIPELINE

GUIDE = (
    "The Comparison section compares every run found, grouped by the config values that differ between them, "
    "with n, the spread over seeds and 95 % intervals. Table 1 puts, for every (dataset, network, bit width) and "
    "STE, our mean ± sample standard deviation over seeds (n = runs with a finite value) in the paper's layout; "
    "the paper's number and the difference ours − paper appear only for runs that follow the paper's protocol "
    "(Yin et al., ICLR 2019: Table 2's epochs and schedule, full data, from a float checkpoint). Training loss is "
    "the last epoch's mean training loss and accuracy the final epoch's validation accuracy, as in the paper (the "
    "best epoch's beside it); a run whose loss became non-finite shows as “diverged” with its reason and is left "
    "out of the means. Figures 2 and 4 show the instability of an STE at good minima, the two-layer section the "
    "theory figures and our runs of the paper's model. Beyond the paper, when their runs are there: weights × "
    "activations, the paper's schedule against a per-STE tuned one, and inside the STE (diagnostics, STE "
    "disagreement, the descent probe). Provenance says what ran where, with which code, libraries, data and epochs."
)


def find_pipeline(roots: list[Path], out: Path) -> dict:
    """The first pipeline.json in (else under) the roots, outside ``out``; {} when there is none."""
    hits = [r / PIPELINE for r in roots if (r / PIPELINE).is_file()]
    hits += sorted(p for r in roots if r.is_dir() for p in r.rglob(PIPELINE))
    hits = [p for p in hits if not p.resolve().is_relative_to(out.resolve())]
    try:
        return read_pipeline(hits[0].parent) if hits else {}
    except RunFileError as err:
        return {"data_note": str(err)}


def header(roots: list[Path], runs: list[Run], profile: str, table: pd.DataFrame) -> str:
    """Title, profile, date and the reading guide; a banner first when Table-1 runs are not the paper's protocol."""
    date = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    where = ", ".join(f"`{r}`" for r in roots)
    lines = [
        "# STE Lab report\n",
        f"Profile: **{profile}** · generated {date} · {len(runs)} runs read from {where}\n",
    ]
    reduced = paper_split(protocol_split(table)[0])[2]
    if reduced:
        lines.append(
            f"> ⚠ **Reduced protocol** — not the paper's: {reduced}. These runs are compared among themselves; no "
            "Δ against the paper is given for them.\n"
        )
    return "\n".join(lines + [GUIDE, ""])


def table1_part(runs: pd.DataFrame, reduced: str, out: Path) -> str:
    """Table 1a/1a′/1b for the runs of one protocol: the paper's (with Δ) or a reduced one (ours alone)."""
    paper = not reduced
    acc = cells(runs, "val_acc")
    title = (
        "the paper's protocol: paper | ours | Δ"
        if paper
        else f"reduced protocol: {reduced} — ours only, no Δ"
    )
    return (
        f"### Table 1a: validation accuracy (%), final epoch ({title})\n\n"
        f"{render_table1(acc, 'val_acc', paper=paper)}\n\n"
        "### Table 1a′: best validation accuracy (%) over the epochs, and at which epoch (ours only)\n\n"
        f"{render_best(cells(runs, 'val_acc_best'))}\n\n"
        f"### Table 1b: training loss ({'paper | ours | Δ' if paper else 'ours, reduced protocol'})\n\n"
        f"{render_table1(cells(runs, 'train_loss'), 'train_loss', paper=paper)}\n\n"
        f"{table1_figures(runs, acc, out)}\n"
        "#### Ordering check\n\nThe paper (Yin et al. 2019, §1.2, §4.1): clipped ReLU ≥ vanilla ReLU > identity "
        "on mean validation accuracy, claimed for the deeper VGG11 and ResNet20; other rows are shown for "
        f"information. The Comparison section gives each pair's interval.\n\n{render_ordering(acc)}\n"
    )


def table1_section(table: pd.DataFrame, out: Path) -> str:
    """Table 1 in the paper's layout: with Δ for runs on the paper's protocol, apart (ours only) for reduced ones;
    then our FP pretraining and the runs kept out of the cells."""
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
        return "## Table 1\n\nNo quantized Table-1 runs.\n\n" + fp_part + "\n" + apart
    paper, reduced, what = paper_split(in_table)
    parts = [
        "## Table 1\n\nCells: ours as mean ± std (n) over seeds, beside the paper's value and Δ = ours − paper "
        "(Yin et al. 2019, §4.1, Table 1) only for runs that follow the paper's protocol (Table 2's epochs and "
        "schedule, full data, from a float checkpoint). A cell averages runs that differ in their seed alone; a "
        "repeated seed counts once (its newest run) and is flagged. Bit widths are activation bits; weights float.\n"
    ]
    parts += [table1_part(paper, "", out)] if len(paper) else []
    parts += [table1_part(reduced, what, out)] if len(reduced) else []
    return "\n".join(parts + [fp_part, apart])


def headline(roots: list[Path], out: Path, profile: str, readme: Path = Path("README.md")) -> str:
    """For a Results page (written between markers by --readme): Table 1a's rows that ran (with Δ only on the
    paper's protocol, else labelled reduced), then the W×A and tuned tables when their runs are there. The link to
    the full report is relative to ``readme``'s folder; the command names the paths as given."""
    runs = scan_all(roots, exclude=out)[0]  # read once: the table and the comparison share them
    table = run_table(runs)
    in_table, _ = protocol_split(table)
    extra = [f"Weights × activations, {title}:\n\n{body}" for title, body in wxa_tables(table)]
    tuned = tuning_table(table, in_table, find_studies(roots, out)[0])
    extra += [f"Paper schedule vs tuned:\n\n{tuned}"] if tuned else []
    link = Path(os.path.relpath(Path(out) / "report.md", Path(readme).parent)).as_posix()
    where = (
        f"full report with protocol, curves and provenance: [{out}/report.md]({link}). Generated by "
        f"`python -m src.report {' '.join(map(str, roots))} --out {out} --profile {profile} --readme {readme}`."
    )
    parts = [f"Profile `{profile}`; {where}\n", compare_section(runs, None)]
    parts += [verdicts] if (verdicts := verdict_lines(runs, out)) else []
    paper, reduced, what = paper_split(in_table)
    if len(paper):
        acc = render_table1(cells(paper, "val_acc"), "val_acc", ours_only=True)
        parts.append(
            f"Validation top-1 (%), final epoch, the paper's protocol: paper | ours (mean ± std, n) | Δ\n\n{acc}\n"
        )
    if len(reduced):
        acc = render_table1(cells(reduced, "val_acc"), "val_acc", paper=False)
        parts.append(f"Validation top-1 (%), final epoch, ours (mean ± std, n) — **reduced protocol: {what}**; no Δ "
                     f"against the paper\n\n{acc}\n")  # fmt: skip
    return "\n".join(parts + extra) + "\n"


def write_headline(readme: Path, profile: str, text: str) -> None:
    """Replace the block between <!-- results:PROFILE --> and <!-- /results:PROFILE --> in ``readme``."""
    start, end = f"<!-- results:{profile} -->", f"<!-- /results:{profile} -->"
    doc = readme.read_text()
    if start not in doc or end not in doc:
        raise NoRuns(f"{readme} has no {start} … {end} block to fill")
    head, rest = doc.split(start, 1)
    readme.write_text(f"{head}{start}\n{text}{end}{rest.split(end, 1)[1]}")


class NoRuns(ValueError):
    """The given folders hold no run dir."""


def build_report(roots, out: Path | None = None, profile: str | None = None) -> Path:
    """Read every run under the roots (a folder or a list of them) and write report.md, runs.csv, curves.csv and
    the figures into ``out`` (default <first root>/report). Run dirs that cannot be read are named in the report,
    one line each."""
    roots = [Path(r) for r in ([roots] if isinstance(roots, str | Path) else roots)]
    out = Path(out) if out else (roots[0] if roots[0].is_dir() else roots[0].parent) / "report"
    runs, problems = scan_all(roots, exclude=out)
    if not runs:
        raise NoRuns(f"no runs under {', '.join(map(str, roots))}" + "".join(f"; {p}" for p in problems))
    out.mkdir(parents=True, exist_ok=True)
    table = run_table(runs)
    write_runs_csv(table, out / "runs.csv")
    kept_curves(runs).to_csv(out / CURVES, index=False)  # read back with runs.csv when the run dirs are gone
    pipeline = find_pipeline(roots, out)
    profile = profile or pipeline.get("profile") or "not stated (no --profile, no pipeline.json)"
    in_table = protocol_split(table)[0]
    problems += curve_problems(runs)
    sections = [
        header(roots, runs, profile, table),
        compare_section(runs, out),
        table1_section(table, out),
        wxa_section(table),
        tuning_section(table, in_table, roots, out),
        figure_section("fig2", runs, out),
        figure_section("fig4", runs, out),
        minima_section(runs, out),
        diagnostics_section(table, runs, out),
        two_layer_section(runs, roots, out),
        provenance_section(runs, pipeline, profile, problems),
    ]
    path = out / "report.md"
    path.write_text(re.sub(r"\n{3,}", "\n\n", "\n".join(sections)))  # an empty section leaves no gap
    return path
