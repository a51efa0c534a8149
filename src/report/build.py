"""Assemble report.md from the run directories under a root; figures go beside it."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

from src.report.provenance import deviations, provenance_section
from src.report.runs import Run, scan, unfinished_dirs
from src.report.sections import figure_section, two_layer_section
from src.report.table1 import render_fp, render_ordering, render_table1

GUIDE = (
    "This report compares our runs with Yin et al., ICLR 2019 (“Understanding Straight-Through Estimator in "
    "Training Activation Quantized Neural Nets”). Table 1 puts, for every (dataset, network, bit width) and STE, "
    "the paper's number beside ours: the mean ± sample standard deviation over the seeds that ran (n = runs "
    "with a finite value), and the difference ours − paper. Training loss is the last epoch's mean training loss "
    "and accuracy the final epoch's validation accuracy, as in the paper; a run whose loss became NaN shows as "
    "“diverged” and is left out of the mean. The ordering check tests the paper's claim clipped ReLU ≥ ReLU > "
    "identity. Figures 2 and 4 show the instability of an STE at good minima, the two-layer section the theory "
    "figures and our runs of the paper's model. Provenance says what ran where, with which code, libraries, "
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


def table1_section(runs: list[Run]) -> str:
    """Table 1a (accuracy), 1b (loss), 1c (our FP pretraining) and the ordering check."""
    head = "## Table 1\n\n"
    fp = [r for r in runs if r.kind == "fp"]
    fp_part = (
        "### Table 1c: full-precision starting points (ours; the paper reports none)\n\n"
        + render_fp(runs)
        + "\n"
        if fp
        else "No full-precision (bits null) runs found.\n"
    )
    if not any(r.kind == "table1" for r in runs):
        return head + "No quantized Table-1 runs found.\n\n" + fp_part
    return (
        head
        + "Cells: paper | ours, mean ± std (n) | Δ = ours − paper. Bit widths are activation bits; weights stay "
        "float.\n\n### Table 1a: validation accuracy (%)\n\n"
        + render_table1(runs, "val_acc")
        + "\n\n### Table 1b: training loss\n\n"
        + render_table1(runs, "train_loss")
        + "\n\n"
        + fp_part
        + "\n## Ordering check\n\nThe paper (§1.2, §4.1): clipped ReLU ≥ vanilla ReLU > identity on mean "
        "validation accuracy, claimed for the deeper VGG11 and ResNet20; other rows are shown for information.\n\n"
        + render_ordering(runs)
        + "\n"
    )


def build_report(root: Path, out: Path | None = None, profile: str | None = None) -> Path:
    """Read every run under root and write report.md plus its figures into out (default root/report)."""
    root = Path(root)
    out = Path(out) if out else root / "report"
    out.mkdir(parents=True, exist_ok=True)
    runs, bad = scan(root, exclude=out)
    pipeline = read_pipeline(root, out)
    profile = profile or pipeline.get("profile") or "not stated (no --profile, no pipeline.json)"
    sections = [
        header(root, runs, profile),
        table1_section(runs),
        figure_section("fig2", runs, out),
        figure_section("fig4", runs, out),
        two_layer_section(runs, root, out),
        provenance_section(runs, pipeline, profile, bad, unfinished_dirs(root, runs, exclude=out)),
    ]
    path = out / "report.md"
    path.write_text("\n".join(sections))
    return path
