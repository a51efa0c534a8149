"""Is a good minimum stable under another STE (Figures 2 and 4)? The verdict rule on a run's curve at lr 1e-5,
whether its starting minimum had plateaued, and each STE's coarse gradient there.

The paper's explanation of the instability (§4.2, Lemma 9's deep-net counterpart) is that at a minimum trained with
clipped ReLU the identity STE's expected coarse gradient does not vanish while clipped ReLU's does. The
``gradients`` stage of src.reproduce writes src.gradients' gradients.json into each starting run's dir; the report
shows it beside the figure and keeps a copy (<out>/gradients/<figure run>.json), which a report regenerated from
its runs.csv reads back when the run dirs are gone.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import pandas as pd

from src.report.runs import Run, at, read_curves
from src.report.table1 import fmt, md_table
from src.runs import RunFileError, read_json


def gradients_file(run: Run, own: bool = False) -> Path | None:
    """gradients.json of the run's starting point (``own``: of the run itself): in the dir of the run whose
    checkpoint it started from (<run dir>/checkpoints/<file>.ckpt) or its own dir, else the copy an earlier report
    kept beside its runs.csv."""
    init, archived = run["init_checkpoint"], run.archived_from
    if own:
        candidates = [run.path / "gradients.json"]
    else:
        candidates = [Path(init).parent.parent / "gradients.json"] if init and init != "archived" else []
    candidates += [Path(archived).parent / "gradients" / f"{run['run_name']}.json"] if archived else []
    return next((c for c in candidates if c.is_file()), None)


def start_gradients(run: Run, out: Path, own: bool = False) -> dict | None:
    """The gradients.json of the run's starting point (``own``: of the run), copied to <out>/gradients/<run>.json;
    None when there is none."""
    path = gradients_file(run, own)
    if path is None:
        return None
    try:
        record = read_json(path)
    except RunFileError:
        return None
    keep = out / "gradients" / f"{run['run_name']}.json"
    if path.resolve() != keep.resolve():
        keep.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, keep)
    return record


def norm_text(record: dict, label: str) -> str:
    """'0.0123 (SE 0.0041)' for one variant's total ‖ḡ‖."""
    norm = record["norms"].get(label, {}).get("total")
    if norm is None:
        return "—"
    se = (record.get("noise") or {}).get(label)
    return f"{norm:.3g}" + (f" (SE {se:.2g})" if se is not None else "")


def expected_norm(record: dict, label: str) -> float | None:
    """‖E g‖ ≈ √(‖ḡ‖² − ‖SE‖²): E‖ḡ‖² = ‖E g‖² + tr Cov(ḡ), and ‖SE‖² estimates that trace, so pure noise gives
    ‖ḡ‖ ≈ ‖SE‖ (not 0) and the difference is what the expected coarse gradient contributes. None without SE."""
    norm, se = record["norms"].get(label, {}).get("total"), (record.get("noise") or {}).get(label)
    if norm is None or se is None:
        return None
    return math.sqrt(max(norm**2 - se**2, 0.0))


def reading(record: dict) -> str:
    """The expected-gradient norm of the minimum's own STE, then identity's and relu's with their ratio to it (the
    paper's question, §4.2 and App. C: is ‖E g‖ of identity, or of relu at 2 bits, ≫ the own STE's at this minimum?)."""
    own = record["ste"]
    labels = [own, *(s for s in ("identity", "relu") if s != own and s in record["norms"])]
    norms = {label: expected_norm(record, label) for label in labels}
    if None in norms.values():  # a gradients.json without the noise: the raw ratio only
        ratio = record["ratio_to_own"].get("identity")
        return f"‖ḡ_identity‖ = {ratio:.3g} × ‖ḡ_{own}‖ (no noise estimate)" if ratio is not None else "—"
    ratio = lambda s: f" ({norms[s] / norms[own]:.3g}×)" if norms[own] > 0 else ""  # noqa: E731
    return "‖E g‖ ≈ " + ", ".join(f"{s} {norms[s]:.3g}" + (ratio(s) if s != own else "") for s in labels)


def gradient_table(labelled: list[tuple[str, Run]], out: Path, own: bool = False) -> str:
    """The coarse-gradient table at each figure run's starting minimum (``own``: at each run itself, labelled by
    the given label); '' when none has gradients.json."""
    rows, examples = [], set()
    for label, run in labelled:
        record = start_gradients(run, out, own)
        if record is None:
            continue
        examples.add(f"{record['examples']:,} examples ({record['split']})")
        variants = ["identity", "relu", "clipped_relu", "float_relu"]
        rows.append([label, record["ste"], *(norm_text(record, v) for v in variants), reading(record)])
    if not rows:
        return ""
    header = ["run" if own else "start of", "minimum's STE", "‖ḡ‖ identity", "‖ḡ‖ relu", "‖ḡ‖ clipped_relu", "‖ḡ‖ float ReLU",
              "reading"]  # fmt: skip
    return (
        f"\nFull-batch coarse gradients at {'each minimum' if own else 'the starting minimum'} (`python -m src.gradients "
        "<run>`, eval-mode BN, the "
        f"run's α, {', '.join(sorted(examples))}): ‖ḡ‖ of every Conv/Linear weight under each backward at the "
        "same weights, with its sampling noise ‖SE‖ (from the batch spread). E‖ḡ‖² = ‖E g‖² + ‖SE‖²: pure noise gives "
        "‖ḡ‖ ≈ ‖SE‖, and √(‖ḡ‖² − ‖SE‖²) estimates the norm of the expected coarse gradient E g. The paper's "
        "explanation (§4.2, Lemma 9's deep-net counterpart) holds where ‖E g‖ of identity is large and the minimum's "
        "own STE's is small.\n\n" + md_table(header, rows) + "\n"
    )


def last_change(run) -> tuple[pd.Series, float, float] | None:
    """A run's val top-1 per epoch (%, epochs ≥ 1), its last change and that change's 95 % CI half-width, in points
    (binomial on both epochs' accuracies over the run's val_examples test images); None when too short to judge."""
    curve = read_curves(run)
    acc = curve["val/acc"].dropna() if "val/acc" in curve else pd.Series(dtype=float)
    acc = acc[acc.index > 0]
    n = run["val_examples"]
    if len(acc) < 2 or not n:
        return None
    a0, a1 = acc.iloc[-2] / 100, acc.iloc[-1] / 100
    return acc, (a1 - a0) * 100, 196 * math.sqrt(a0 * (1 - a0) / n + a1 * (1 - a1) / n)


def still_moving(run) -> bool:
    """Whether a run's last epoch changed its val top-1 by more than the 95 % CI: not a minimum yet (the settle
    stage of src.reproduce trains such a start on before Figures 2 and 4 start from it)."""
    test = last_change(run)
    return test is not None and abs(test[1]) > test[2]


def plateau(parent: Run | None) -> str:
    """'val top-1 71.2, 71.6, 71.5 % over its last 3 epochs: plateaued (last change −0.10 ± 1.25 pt, 95 % CI)'."""
    if parent is None:
        return "its run is not among the runs read"
    test = last_change(parent)
    if test is None:
        return "its curve is not kept (archived run) or too short to judge"
    acc, change, half = test
    state = "plateaued" if abs(change) <= half else "still moving"
    last = ", ".join(f"{a:.2f}" for a in acc.iloc[-3:])
    return (
        f"val top-1 {last} % over its last {min(3, len(acc))} epochs: {state} "
        f"(last change {change:+.2f} ± {half:.2f} pt, 95 % CI from {parent['val_examples']:,} test images)"
    )


SLOW_LR = 1e-5  # the paper's probe of a minimum's stability (§4.2, Figures 2 and 4)
RULE = (
    "Verdict rule: over the epochs trained at lr ≤ 1e-5 from the starting minimum (epoch 0), the run is *repelled* "
    "when its val top-1 falls by more than the 95 % CI of the change (binomial, both ends, N test images) or its "
    "training loss at least doubles; otherwise *not repelled within* those steps."
)


def verdict(run: Run, curve: pd.DataFrame) -> str:
    """'repelled: val top-1 71.30 → 24.10 % in 4,000 steps at lr 1e-5 (Δ −47.20 ± 1.30 pt, 95 % CI)' or
    'not repelled within N steps …', computed from the run's curve by RULE."""
    if "lr" not in curve or at(curve, 0, "val/acc") is None:
        return "no curve: no verdict"
    slow = [e for e in curve.index if e > 0 and curve.loc[e, "lr"] <= SLOW_LR * (1 + 1e-6)]
    held = [e for i, e in enumerate(slow, start=1) if e == i]  # the consecutive 1e-5 epochs from the start
    if not held or at(curve, held[-1], "val/acc") is None:
        return "no epoch at lr ≤ 1e-5: no verdict"
    end, n = held[-1], run["val_examples"]
    a0, a1 = at(curve, 0, "val/acc"), at(curve, end, "val/acc")
    steps = int(curve.loc[end, "step"] - curve.loc[0, "step"])
    half = (
        196 * math.sqrt((a0 / 100) * (1 - a0 / 100) / n + (a1 / 100) * (1 - a1 / 100) / n) if n else math.nan
    )
    l0, l1 = at(curve, 0, "train/loss") or at(curve, 1, "train/loss"), at(curve, end, "train/loss")
    rose = l0 is not None and l1 is not None and l1 >= 2 * l0
    repelled = a1 - a0 < -half or rose
    what = f"val top-1 {a0:.2f} → {a1:.2f} % in {steps:,} steps at lr ≤ 1e-5 (Δ {a1 - a0:+.2f} ± {half:.2f} pt, 95 % CI"
    what += f"; train loss {fmt(l0, 'train_loss')} → {fmt(l1, 'train_loss')})"
    return f"repelled: {what}" if repelled else f"not repelled within {steps:,} steps: {what}"


def minima_section(runs: list[Run], out: Path) -> str:
    """'Coarse gradients at the minima': every run whose dir holds gradients.json (the pipeline's gradients stage
    writes it at each Table-1 minimum), whether or not a figure run starts from it; '' when there is none."""
    mine = sorted(
        (r for r in runs if r.done and gradients_file(r, own=True)), key=lambda r: str(r["run_name"])
    )
    table = gradient_table([(str(r["run_name"]), r) for r in mine], out, own=True)
    return f"## Coarse gradients at the minima\n{table}" if table else ""
