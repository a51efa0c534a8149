"""The report's curve sections: Figures 2 and 4 (instability at good minima) and the two-layer model."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from src.paper import TABLE1
from src.report.figures import plot_curves, plot_dots
from src.report.provenance import call, counted
from src.report.runs import Run, at, read_curves
from src.report.stability import RULE, gradient_table, plateau, reading, start_gradients, verdict
from src.report.table1 import fmt, md_table, newest_per_seed, row_label, ste_order


@dataclass(frozen=True)
class FigureSpec:
    """What the paper published for one instability figure; ``paper_*`` map a run's tag to (loss, acc %)."""

    number: int
    experiment: str
    file: str
    caption: str
    paper_start: dict[str, tuple[float, float]]
    paper_final: dict[str, tuple[float, float]]
    # what the paper claims the figure shows, with its time scale in steps (batch 128, 391 per epoch)
    claim: str


RESNET4, RESNET2 = TABLE1[("cifar10", "resnet20", 4)], TABLE1[("cifar10", "resnet20", 2)]
FIGURES = {
    "fig2": FigureSpec(
        2,
        "fig2_identity_repelled",
        "figure2.png",
        "Identity STE started from the good 4-bit ResNet-20 minima of the ReLU and clipped ReLU STEs (Yin et al. "
        "2019, §4.2, Figure 2: lr 1e-5 for 20 epochs, then Table 2's schedule). Paper (Figure 2 legend, final "
        "values): CReLU 1.53 / 47.48 %, "
        "ReLU 1.48 / 49.73 %; both end below the identity STE trained directly (54.16 %).",
        {"from_relu": RESNET4["relu"], "from_clipped_relu": RESNET4["clipped_relu"]},
        {"from_relu": (1.48, 49.73), "from_clipped_relu": (1.53, 47.48)},
        "the paper's claim: at lr 1e-5 the identity STE is repelled from the good 4-bit minima; from clipped "
        "ReLU's, val top-1 ≈91.5 → ≈17 % by epoch ≈10, i.e. within ≈3,900 steps (curve values read off the plot)",
    ),
    "fig4": FigureSpec(
        4,
        "fig4_relu_2bit",
        "figure4.png",
        "ReLU STE at a constant lr 1e-5, started from the 2-bit ResNet-20 clipped ReLU minimum. Paper (Yin et "
        "al. 2019, Figure 4 caption): it starts at 88.38 % validation accuracy, and both errors begin to increase.",
        {"from_clipped_relu": (RESNET2["clipped_relu"][0], 88.38)},
        {},
        "the paper's claim: at lr 1e-5 the ReLU STE drifts away from the 2-bit clipped ReLU minimum, slowly: val "
        "top-1 ≈88 → ≈80 % by epoch 60, i.e. within ≈23,500 steps (read off the plot)",
    ),
}
THEORY = {
    "figure1.png": "Figure 1 (the paper's): the empirical coarse gradient approaches its expectation as the "
    "sample size grows.",
    "cgd_spurious.png": "Addition beyond the paper: Algorithm 1 started near the spurious minimizer, per STE.",
    "cgd_global.png": "Addition beyond the paper: Algorithm 1 converging to the global minimum.",
}


def labelled_curves(runs: list[Run], label) -> list[tuple[str, Run, pd.DataFrame]]:
    """(label, run, curves) per run: ``label(run)``, plus the seed when there are several, plus the dir on a tie."""
    seeds = {r["seed"] for r in runs}
    names = [label(r) + (f" s{r['seed']}" if len(seeds) > 1 else "") for r in runs]
    names = [n if names.count(n) == 1 else f"{n} ({r.path.name})" for n, r in zip(names, runs, strict=True)]
    return [(n, r, read_curves(r)) for n, r in zip(names, runs, strict=True)]


def parent_run(run: Run, runs: list[Run]) -> Run | None:
    """The run whose checkpoint this run started from (init_checkpoint), if it is among the runs."""
    init = run["init_checkpoint"]
    if not init or init == "archived":  # runs.csv files before the init_checkpoint column
        return None
    target = Path(init)
    # the same file; once it is gone (an archived run's, a report made elsewhere) <stage>/<run>/checkpoints/<file>
    key = (lambda p: p.resolve()) if target.exists() else (lambda p: p.parts[-4:])  # noqa: E731
    wanted = key(target)
    for other in runs:
        own = other.path / "checkpoints" / "last.ckpt"
        if wanted in {key(own), key(Path(other["checkpoint"] or own))}:
            return other
    return None


def pair(loss: float | None, acc: float | None) -> str:
    """'loss / acc' as Table 1 writes it."""
    return f"{fmt(loss, 'train_loss')} / {fmt(acc, 'val_acc')}"


def start_from_parent(run: Run, curve: pd.DataFrame, runs: list[Run]) -> bool:
    """Put the starting run's final training loss at epoch 0 (epoch 0 is validated, not trained)."""
    parent = parent_run(run, runs)
    if parent is None or 0 not in curve.index or at(curve, 0, "train/loss") is not None:
        return False
    if parent.value("train_loss") is None:
        return False
    curve.loc[0, "train/loss"] = parent.value("train_loss")
    return True


def figure_row(label: str, run: Run, curve: pd.DataFrame, spec: FigureSpec) -> list[str]:
    """Run, epochs, ours at start and end, and the paper's start and end (loss / acc %)."""
    final = f"{run.status}: {run['reason']}" if run.status != "finished" else None
    final = final or pair(run.value("train_loss"), run.value("val_acc"))
    paper = [spec.paper_start.get(run["tag"]), spec.paper_final.get(run["tag"])]
    start = pair(at(curve, 0, "train/loss"), at(curve, 0, "val/acc"))
    epochs = f"{run['epochs']} / {run['max_epochs']}"
    return [label, epochs, start, final, *(pair(*p) if p else "—" for p in paper), verdict(run, curve)]


def what_ran(runs: list[Run]) -> tuple[str, int | None]:
    """Our schedule as the runs' configs state it (Figure 2's real hold length), and the lr switch epoch (None when
    the hold lasts the whole run: there is no switch to draw)."""
    recipes, holds = [], set()
    for run in runs:
        sched, lr = run.config.get("scheduler") or {}, (run.config.get("optimizer") or {}).get("lr")
        hold, epochs = sched.get("hold_epochs"), run["max_epochs"]
        recipe = f"{epochs} epochs, {call(sched)} from lr {lr}"
        if hold is not None and lr is not None:
            factor = sched.get("hold_factor")
            held = (
                f"lr {lr * factor:g}"
                if factor is not None
                else "the held lr (runs.csv before 2026-12-05 lacks it)"
            )
            recipe = f"{held} for {hold} epochs"
            if epochs is None or hold < epochs:
                then = call(sched["then"]) if sched.get("then") else f"milestones {sched.get('milestones')}"
                recipe += f", then {then} from lr {lr}; {epochs} epochs in all"
            holds.add(hold if epochs is None or hold < epochs else None)
        recipes.append(recipe)
    switch = next(iter(holds)) if len(holds) == 1 else None  # one line only when all runs switch together
    return f"Ours: {counted(recipes)}.", switch


def start_line(label: str, run: Run, runs: list[Run]) -> str:
    """'- from_relu: from `<run>`, val top-1 … over its last 3 epochs: plateaued (…)'."""
    parent = parent_run(run, runs)
    if parent is None and run.archived_from:
        return f"- {label}: the starting run is not kept (archived runs)\n"
    origin = parent_run(parent, runs) if parent is not None and parent.kind == "settle" else None
    settled = (
        f" (`{origin.path.name}` was still moving, so it was trained on for {parent['epochs']} epochs at lr "
        f"{(parent.config.get('optimizer') or {}).get('lr')})"
        if origin
        else ""
    )
    return f"- {label}: from `{parent.path.name if parent else '—'}`{settled}, {plateau(parent)}\n"


def band(n: int | None) -> str:
    """The caption's note on plot_curves(val_examples=n); '' without n."""
    if not n:
        return ""
    return f" Shaded: each point's 95 % binomial interval from {n:,} test images; the loss axis starts at 0."


def figure_section(kind: str, runs: list[Run], out: Path) -> str:
    """Figure 2 or 4: the PNG of training loss and validation accuracy per epoch, and start/final numbers."""
    spec = FIGURES[kind]
    mine = [r for r in runs if r.kind == kind and r.status != "interrupted"]
    if not mine:
        return f"No Figure {spec.number} runs (experiment `{spec.experiment}`).\n"
    curves = labelled_curves(mine, lambda r: r["tag"] or r["run_name"])
    from_parent = [start_from_parent(run, curve, runs) for _, run, curve in curves]
    ours, switch = what_ran(mine)
    title = f"Figure {spec.number} (ours)"
    n = next((r["val_examples"] for _, r, _ in curves if r["val_examples"]), None)
    if any(len(c[2]) for c in curves):
        plot_curves({c[0]: [c[2]] for c in curves}, ("train/loss", "val/acc"), out / spec.file, title, switch,
                    val_examples=n)  # fmt: skip
        link = f"![Figure {spec.number}]({spec.file})"
    else:  # no figure, so no band to note
        link, n = "*No curves: these runs' metrics.csv files are gone (archived runs).*", None
    note = " Epoch 0's training loss is the starting run's final training loss (its summary)." * any(
        from_parent
    )
    header = ["run", "epochs run / max", "ours start", "ours final", "paper start", "paper final", "verdict"]
    rows = [figure_row(*c, spec) for c in curves]
    starts = "".join(start_line(label, run, runs) for label, run, _ in curves)
    return (
        f"## Figure {spec.number}\n\nTested: {spec.claim}.\n\n{link}\n\n*{spec.caption} {ours} Epoch 0 is "
        f"the starting point's validation, epoch e the state after epoch e.{note}{band(n)}*\n\nTraining loss / "
        f"validation accuracy (%):\n\n{md_table(header, rows)}\n\n{RULE}\n\nStarting minima:\n\n{starts}"
        + gradient_table([(label, run) for label, run, _ in curves], out)
    )


def find_theory(roots: list[Path], exclude: Path) -> dict[str, Path]:
    """The theory outputs under the roots (src.theory's PNGs and certificate.md), first by path, outside
    ``exclude``."""
    found = {}
    for name in [*THEORY, "certificate.md"]:
        hits = sorted(p for root in roots if Path(root).is_dir() for p in Path(root).rglob(name))
        hits = [p for p in hits if not p.resolve().is_relative_to(exclude.resolve())]
        if hits:
            found[name] = hits[0]
    return found


def theory_parts(roots: list[Path], out: Path) -> list[str]:
    """src.theory's figures (copied beside report.md, so links are relative) and its certificate table."""
    theory, parts = find_theory(roots, out), []
    for name, caption in THEORY.items():
        if name in theory:
            shutil.copyfile(theory[name], out / name)
            parts.append(f"![{name}]({name})\n\n*{caption}*\n")
    if "certificate.md" in theory:
        table = theory["certificate.md"].read_text().strip()
        parts.append(f"Descent certificate (`certificate.md`):\n\n{table}\n")
    return parts or ["No theory outputs (figure1.png, cgd_*.png, certificate.md) found.\n"]


def population_row(label: str, run: Run, curve: pd.DataFrame) -> list[str]:
    """STE, epochs, and the population loss at the start and end, and the final training loss."""
    show = lambda v: f"{v:.4g}" if v is not None else "—"  # noqa: E731
    final = [run.value(m) for m in ("population_loss", "train_loss")]
    final = [run.status] * 2 if run.status != "finished" else [show(v) for v in final]
    epochs = f"{run['epochs']} / {run['max_epochs']}"
    return [label, epochs, show(at(curve, 0, "val/population_loss")), *final]


def two_layer_section(runs: list[Run], roots: list[Path], out: Path) -> str:
    """The two-layer model: the theory outputs, then our runs' population loss per epoch (one curve per STE)."""
    parts = ["## Two-layer model\n", *theory_parts(roots, out)]
    mine = [r for r in runs if r.kind == "two_layer" and r.status != "interrupted"]
    if not mine:
        return "\n".join(parts + ["No two-layer runs found.\n"])
    curves = labelled_curves(mine, lambda r: r["ste"])
    title = "Two-layer model: population loss (ours)"
    plot_curves({c[0]: [c[2]] for c in curves}, ("val/population_loss",), out / "two_layer.png", title)
    header = ["STE", "epochs run / max", "start population loss", "final population loss", "final train loss"]
    caption = "*Our two-layer runs through the framework: population loss f(v, w) (Lemma 1) per epoch.*\n"
    table = md_table(header, [population_row(*c) for c in curves])
    return "\n".join(parts + ["![two-layer runs](two_layer.png)\n", caption, table + "\n"])


def slug(key) -> str:
    """A file name part for a Table-1 row key: ('cifar10', 'vgg11', 2, 'pact') -> 'cifar10_vgg11_2bit_pact'."""
    data, model, bits, *variant = key
    text = "_".join([str(data), str(model), f"{bits}bit", *variant])
    return "".join(c if c.isalnum() or c in "_-." else "-" for c in text)


def table1_figures(in_table: pd.DataFrame, acc: dict, out: Path) -> str:
    """Per Table-1 row: loss and accuracy per epoch per STE (mean, min–max band over seeds); per (data, model):
    final accuracy per STE and bit width as bars with std error bars."""
    if in_table.empty:
        return ""
    parts = ["### Table 1 figures\n"]
    counted_runs = newest_per_seed(in_table, ("key", "column"))
    counted_runs = counted_runs[counted_runs["status"] == "finished"]
    for key, newest in counted_runs.groupby("key", sort=False):
        groups = {ste: [read_curves(r) for r in g["run"]] for ste, g in newest.groupby("column", sort=False)}
        if not any(len(c) for g in groups.values() for c in g):
            continue  # archived runs: no metrics.csv
        name = f"table1_{slug(key)}.png"
        title = " ".join(row_label(key)) + " bit: mean over seeds, band min–max"
        plot_curves(groups, ("train/loss", "val/acc"), out / name, title)
        parts.append(f"![{name}]({name})\n")
    cells = [
        {"data": k[0], "model": k[1], "row": row_label(k)[2], "ste": ste, "mean": c.mean, "std": c.std}
        for k, row in acc.items()
        for ste, c in row.items()
    ]
    for (data, model), group in pd.DataFrame(cells).groupby(["data", "model"], sort=False):
        # rows: bit widths; columns: ("mean" | "std", STE)
        bars = group.pivot(index="row", columns="ste", values=["mean", "std"]).astype(float)
        name = f"final_{data}_{model}.png"
        net = " ".join(row_label((data, model, None))[:2])
        title = f"{net}: final accuracy, ± std over seeds (no bar: one seed)"
        plot_dots(bars["mean"], bars["std"], ste_order(group["ste"]), out / name, title)
        parts.append(f"![{name}]({name})\n")
    caption = (
        "*Curves: epoch 0 is the starting point (the FP checkpoint, validated before training); diverged runs "
        "are not drawn. Dots: final-epoch accuracy, mean over seeds, error bar = sample std (none for one seed).*\n"
    )
    return "\n".join(parts + [caption])


def verdict_lines(runs: list[Run], out: Path) -> str:
    """For a Results page: each Figure 2 / 4 run's verdict (RULE) and the coarse-gradient reading at its start."""
    lines = []
    for kind, spec in FIGURES.items():
        for run in sorted((r for r in runs if r.kind == kind and r.done), key=lambda r: str(r["tag"])):
            grads = start_gradients(run, out)
            why = f" At the start: {reading(grads)}." if grads else ""
            lines.append(
                f"- Figure {spec.number} ({spec.claim}), {run['tag'] or run['run_name']}: "
                f"{verdict(run, read_curves(run))}.{why}"
            )
    return "\n".join(lines) + f"\n\n{RULE}\n" if lines else ""
