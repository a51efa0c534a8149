"""Paper schedule vs tuned: per STE and bit width, the paper's lr / weight decay and its final accuracy
beside the tuned lr / weight decay (an Optuna study per STE), its best holdout value and its retrained accuracy.

Layout: <root>/tune/<ste>-<bits>bit/tuning.json with the study's trial run dirs beside it (Run.kind ``tune``),
<root>/tuned/<run> (the best parameters retrained, kind ``tuned``), <root>/table1/<run> (the paper's schedule).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from src.report.compare import Group, newest_per_seed, ordering
from src.report.provenance import counted, hours
from src.report.stats import winner
from src.report.table1 import Cell, cells, fmt, fmt_cell, md_table, row_label, ste_column, ste_order
from src.runs import RunFileError, read_tuning

STUDY_FILE = "tuning.json"


@dataclass(frozen=True)
class Study:
    """One tuning study as the report needs it; ``best`` is {"params": {...}, "value": float | None}."""

    path: Path
    ste: str | None
    bits: int | None
    where: tuple  # (data, model) when the file names them, else (None, None)
    holdout: int | None  # training examples held out for the objective, when the file says
    trials: tuple[dict, ...]  # each {"params": {...}, "value": float | None, "done": bool}
    best: dict

    @property
    def complete(self) -> int:
        """Trials that finished with a value (Optuna's state COMPLETE)."""
        return sum(t["done"] for t in self.trials)


def done(state) -> bool:
    """Whether a trial's state says it ended with a value: Optuna's COMPLETE (or TrialState.COMPLETE), finished."""
    return str(state).lower().rsplit(".", 1)[-1] in ("complete", "finished")


def read_study(path: Path) -> Study:
    """tuning.json, read defensively: the one place that knows its keys (adjust here when the format changes).

    Trials: ``trials`` (each params, value, and Optuna's ``state``, else a ``status``). Best: ``best`` or ``best_trial`` (params,
    value), else ``best_params`` / ``best_value``, else the completed trial of highest value. STE and bits: the
    file's ``ste`` / ``bits``, else the study dir's name <ste>-<bits>bit; data and model: ``data`` / ``model``;
    the holdout size: ``holdout``.
    """
    doc = read_tuning(path.parent)
    trials = tuple(
        {
            "params": t.get("params") or {},
            "value": t.get("value"),
            "done": t.get("value") is not None and done(t.get("state", t.get("status"))),
        }
        for t in doc.get("trials") or []
    )
    best = doc.get("best") or doc.get("best_trial") or {}
    best = {
        "params": best.get("params", doc.get("best_params")),
        "value": best.get("value", doc.get("best_value")),
    }
    if best["params"] is None:  # no best recorded: the completed trial of highest value
        best = max(
            (t for t in trials if t["done"]), key=lambda t: t["value"], default={"params": {}, "value": None}
        )
    named = re.fullmatch(r"(.+)-(\d+)bit", path.parent.name)
    ste = doc.get("ste") or (named and named[1])
    bits = doc.get("bits") or (named and int(named[2]))
    where = (doc.get("data"), doc.get("model"))
    holdout = doc.get("holdout")
    return Study(path.parent, ste, None if bits is None else int(bits), where, holdout, trials, best)


def param(params: dict, name: str):
    """A searched hyper-parameter by its Hydra key (optimizer.lr) or its short name (lr); None when absent."""
    return params.get(f"optimizer.{name}", params.get(name))


def lr_wd(lr, wd) -> str:
    """'lr / weight decay' as '0.01 / 0.0001' ('—' where unknown)."""
    show = lambda x: "—" if x is None or pd.isna(x) else f"{float(x):.3g}"  # noqa: E731
    return f"{show(lr)} / {show(wd)}"


def find_studies(roots: list[Path], out: Path) -> tuple[list[Study], list[Path]]:
    """Every tuning.json under the roots (outside ``out``): the studies read and the files that did not parse."""
    studies, bad = [], []
    for path in sorted(p for root in roots if Path(root).is_dir() for p in Path(root).rglob(STUDY_FILE)):
        if path.resolve().is_relative_to(out.resolve()):
            continue
        try:
            studies.append(read_study(path))
        except (RunFileError, AttributeError, TypeError):  # half-written or another format: say so
            bad.append(path)
    return studies, bad


def trials_of(study: Study, table: pd.DataFrame) -> pd.DataFrame:
    """The study's trial runs: the tune runs inside its dir."""
    inside = table["path"].map(lambda p: Path(p).resolve().is_relative_to(study.path.resolve()))
    return table[(table["kind"] == "tune") & inside]


def base_cells(runs: pd.DataFrame) -> dict[tuple, dict[str, Cell]]:
    """Final accuracy cells per (data, model, bits) and STE, ignoring variant knobs (the tuned runs' tag)."""
    if runs.empty:
        return {}
    keyed = runs.assign(
        key=[(r["data"], r["model"], int(r["bits"])) for _, r in runs.iterrows()],
        column=[ste_column(r) for _, r in runs.iterrows()],
    )
    return cells(keyed, "val_acc")


def ran_with(runs: pd.DataFrame) -> str:
    """The distinct 'lr / wd' the runs' configs state, comma separated ('—' without runs)."""
    return (
        ", ".join(
            dict.fromkeys(lr_wd(lr, wd) for lr, wd in zip(runs["lr"], runs["weight_decay"], strict=True))
        )
        or "—"
    )


def tuned_lr_wd(study: Study | None, tuned: pd.DataFrame) -> str:
    """The study's best lr / wd; flagged when the tuned runs' configs ran something else."""
    best = lr_wd(*(param(study.best["params"], k) for k in ("lr", "weight_decay"))) if study else "—"
    ran = ran_with(tuned)
    return best if ran in ("—", best) else f"{best} ⚠ tuned runs ran {ran}"


def tuning_row(
    key: tuple, study: Study | None, paper: pd.DataFrame, tuned: pd.DataFrame, acc: dict
) -> list[str]:
    """One row: the paper schedule's lr / wd and accuracy, the study's trials, best and the tuned accuracy."""
    data, model, bits, ste = key
    ours, after = acc["paper"].get(key[:3], {}).get(ste), acc["tuned"].get(key[:3], {}).get(ste)
    diff = after.mean - ours.mean if ours and after and None not in (ours.mean, after.mean) else None
    trials = f"{study.complete} of {len(study.trials)}" if study else "no study"
    holdout = fmt(study.best["value"], "val_acc") if study and study.best["value"] is not None else "—"
    return [
        *row_label(key[:3]), ste, ran_with(paper), fmt_cell(ours, "val_acc"), trials,
        tuned_lr_wd(study, tuned), holdout, fmt_cell(after, "val_acc"), fmt(diff, "val_acc", sign=True),
    ]  # fmt: skip


def study_key(study: Study, trials: pd.DataFrame, others: pd.DataFrame) -> tuple:
    """(data, model, bits, ste) of a study: data and model from tuning.json, else its trial runs, else the runs
    (tuned, paper schedule) of its STE and bits."""
    if None not in study.where:
        return (*study.where, study.bits, study.ste)
    like = others[(others["ste"] == study.ste) & others["bits"].eq(study.bits).fillna(False).astype(bool)]
    source = trials if len(trials) else like
    first = lambda col: source[col].mode().iloc[0] if source[col].notna().any() else None  # noqa: E731
    return (first("data"), first("model"), study.bits, study.ste)


def study_text(study: Study) -> str:
    """'relu 2 bit: 6 trials, holdout 5000 examples'."""
    holdout = f"holdout {study.holdout} examples" if study.holdout else "holdout not stated"
    return f"{study.ste} {study.bits} bit: {len(study.trials)} trials, {holdout}"


def caption(studies: list[Study], trials: pd.DataFrame) -> str:
    """Trials and budget per trial, the ranges searched and the tuning's wall time, from the files that ran."""
    params = [t["params"] for s in studies for t in s.trials]
    ranges = []
    for name in ("lr", "weight_decay"):
        tried = [v for p in params if (v := param(p, name)) is not None]
        ranges += [f"{name} {min(tried):.3g}–{max(tried):.3g}"] if tried else []
    budget = (
        f"{m} epochs" + (f", train_subset {s}" if not pd.isna(s) else "")
        for m, s in zip(trials["max_epochs"], trials["train_subset"], strict=True)
    )
    return (
        "*Paper schedule: the Table-1 runs (Yin et al. 2019, Table 2's lr and weight decay); tuned: the study's best "
        "lr and weight decay (objective: best validation top-1 on a holdout split of the training set), retrained "
        "on the full training set with the same schedule. Final top-1: final-epoch validation accuracy (%), mean ± "
        f"std over seeds (n). Studies: {'; '.join(map(study_text, studies))}. Budget per trial: "
        f"{counted(budget) or 'no trial run dirs found'}; searched {', '.join(ranges) or 'no trial params'}; tuning "
        f"wall time {hours(trials['wall_time_s'].fillna(0).sum())} over {len(trials)} trial runs.*\n"
    )


def select(runs: pd.DataFrame, key: tuple) -> pd.DataFrame:
    """The runs of one (data, model, bits, ste)."""
    data, model, bits, ste = key
    same_bits = runs["bits"].eq(bits).fillna(False).astype(bool)  # Int64 bits: a null compares to <NA>
    return runs[(runs["data"] == data) & (runs["model"] == model) & same_bits & (runs["ste"] == ste)]


def tuning_table(table: pd.DataFrame, in_table: pd.DataFrame, studies: list[Study]) -> str:
    """The table (one row per (data, model, bits, STE) with a study or tuned runs) and its caption; '' if none."""
    ran = table["status"].isin(["finished", "diverged"])
    tuned = table[(table["kind"] == "tuned") & ran & table["bits"].notna()]
    if not studies and tuned.empty:
        return ""
    paper = in_table[in_table["key"].map(len) == 3]  # the paper's rows, no variant
    acc = {"paper": base_cells(paper), "tuned": base_cells(tuned)}
    keyed = {study_key(s, trials_of(s, table), pd.concat([tuned, paper])): s for s in studies}
    keys = set(keyed) | {(r["data"], r["model"], int(r["bits"]), r["ste"]) for _, r in tuned.iterrows()}
    rows = [
        tuning_row(key, keyed.get(key), select(paper, key), select(tuned, key), acc)
        for key in sorted(keys, key=lambda k: (*map(str, k[:3]), ste_order([k[3]]).index(k[3])))
    ]
    header = ["Dataset", "Network", "BitWidth", "STE", "paper schedule: lr / wd", "paper schedule: final top-1",
              "trials (complete of all)", "tuned: lr / wd", "tuned: best holdout top-1", "tuned: final top-1",
              "Δ final (tuned − schedule)"]  # fmt: skip
    text = f"{md_table(header, rows)}\n\n{caption(studies, table[table['kind'] == 'tune'])}"
    return text + ranking(paper, tuned, sorted({k[:3] for k in keys}, key=lambda k: tuple(map(str, k))))


def arm_groups(runs: pd.DataFrame, where: tuple) -> list[Group]:
    """One Group per STE of one arm (paper schedule or tuned) at (data, model, bits), labelled by the STE."""
    mine = runs[[(r["data"], r["model"], r["bits"]) == where for _, r in runs.iterrows()]]
    stes = ste_order(list(dict.fromkeys(mine["ste"])))
    return [Group((s,), s, newest_per_seed(list(mine[mine["ste"] == s]["run"]))) for s in stes]


def resolved(a: Group, b: Group) -> str:
    """'a > b', 'b > a' or 'unresolved' (src.report.stats.winner)."""
    top = winner(a, b)
    return "unresolved" if top is None else f"{top.label} > {(b if top is a else a).label}"


def changes(changed: dict, pairs) -> str:
    """'a vs b (a > b → unresolved); …' for the pairs whose status changed between the arms."""
    return "; ".join(f"{a} vs {b} ({changed[a, b][0]} → {changed[a, b][1]})" for a, b in pairs)


def ranking(paper: pd.DataFrame, tuned: pd.DataFrame, wheres: list[tuple]) -> str:
    """'Does tuning change the ranking of the STEs?': per (data, model, bits), every pair of STEs ordered in each
    arm with its 95 % CI (src.report.compare: paired over shared seeds, else Welch), and the answer: yes when a
    pair's ordering reverses between the arms, partly when a pair is resolved in one arm only, no otherwise."""
    parts = []
    for where in wheres:
        arms = {"paper schedule": arm_groups(paper, where), "tuned": arm_groups(tuned, where)}
        by_ste = [{g.label: g for g in groups} for groups in arms.values()]
        stes = [s for s in by_ste[0] if s in by_ste[1]]
        pairs = [(a, b) for i, a in enumerate(stes) for b in stes[i + 1 :]]
        if not pairs:
            continue
        lines = [
            f"- {arm}: " + "; ".join(filter(None, (ordering(groups[a], groups[b]) for a, b in pairs)))
            for arm, groups in zip(arms, by_ste, strict=True)
        ]
        status = {(a, b): [resolved(groups[a], groups[b]) for groups in by_ste] for a, b in pairs}
        changed = {pair: s for pair, s in status.items() if s[0] != s[1]}
        reversed_ = [
            pair for pair, s in changed.items() if "unresolved" not in s
        ]  # a > b in one arm, b > a in the other
        seeds = sorted({r["seed"] for groups in arms.values() for g in groups for r in g.runs}, key=str)
        answer = (
            f"**yes, reversed**: {changes(changed, reversed_)}"
            if reversed_
            else f"**partly**: no ordering reverses; resolved in one arm only: {changes(changed, changed)}"
            if changed
            else "**no**: every pair of STEs is ordered the same way in both arms (or unresolved in both)"
        )
        parts.append(
            f"{' '.join(row_label(where))}-bit (seeds {', '.join(map(str, seeds))}): {answer}.\n\n"
            + "\n".join(lines)
        )
    if not parts:
        return ""
    return (
        "\n### Does tuning change the ranking of the STEs?\n\nEach pair of STEs ordered by final top-1 under the "
        "paper's schedule and under each STE's tuned lr / weight decay, with the 95 % CI of the difference; an "
        "ordering counts only when its CI excludes 0.\n\n" + "\n\n".join(parts) + "\n"
    )


def tuning_section(table: pd.DataFrame, in_table: pd.DataFrame, roots: list[Path], out: Path) -> str:
    """'Paper schedule vs tuned' from the studies under the roots and the runs; one line when there are none."""
    studies, bad = find_studies(roots, out)
    body = tuning_table(table, in_table, studies)
    warn = "".join(f"- ⚠ unreadable `{p}`\n" for p in bad)
    if not body:
        return f"No tuning studies ({STUDY_FILE}) or tuned runs.\n{warn}"
    return f"## Paper schedule vs tuned\n\n{body}\n{warn}"
