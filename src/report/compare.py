"""Compare any runs: group them by the config values that differ between them, with statistics a reviewer accepts.

Within one (model, data) block, a *setting* is a run's identity (src/runs) without what varies with the seed (the
seed, the data order it fixes, the per-seed init checkpoint, which counts only as "from a checkpoint" or "from
scratch"). The keys whose values differ between the block's settings are its grouping keys; runs equal in all of
them are repeats of one group, one per seed (a repeated seed counts once: its newest run). Per group: mean ± sample
std, n and a 95 % t-interval over seeds; with one seed, the binomial standard error of the test accuracy instead
(√(p(1−p)/N), N the validation examples), labelled as such. Pairs of groups that differ in one key are ordered
with the interval of their difference: paired by seed where they share seeds, else Welch's.
The statistics themselves live in src/report/stats.py.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from src.report.figures import plot_curves
from src.report.runs import Run, read_curves
from src.report.stats import Stat, difference, stat, winner
from src.report.table1 import md_table

SEED_KEYS = ("seed", "data.seed", "init.checkpoint")  # vary with the seed: never grouping keys


def setting(run: Run) -> dict:
    """What a run is, apart from its seed: identity without SEED_KEYS, plus ``init`` (checkpoint | scratch); a float
    run (quant.bits null) has no STE, whatever the ste group says."""
    fp = run.identity.get("quant.bits", run["bits"]) is None
    ident = {
        k: v
        for k, v in run.identity.items()
        if k not in SEED_KEYS and not (fp and k.startswith(("ste.", "quant.ste.")))
    }  # the weights' STE (wquant.ste) stays: float activations need not mean float weights
    return ident | {"init": "checkpoint" if run.identity.get("init.checkpoint") else "scratch"}


def short(key: str) -> str:
    """A grouping key as a label shows it: 'ste.name' -> 'ste', 'quant.bits' -> 'bits', 'optimizer.lr' -> 'lr'."""
    names = {"quant.bits": "bits", "wquant.bits": "wbits", "trainer.max_epochs": "epochs"}
    return names.get(key, key.removesuffix(".name").removeprefix("optimizer.").removeprefix("scheduler."))


@dataclass
class Group:
    """Runs of one setting (one per seed, the newest of a repeated seed) and how it differs from the others."""

    key: tuple  # the values of the block's grouping keys, in order
    label: str
    runs: list[Run]

    def finished(self, metric: str) -> list[tuple[int, float]]:
        """(seed, value) of the finished runs with a finite ``metric``."""
        return [(r["seed"], v) for r in self.runs if (v := r.value(metric)) is not None]

    @property
    def ste(self) -> str | None:
        return self.runs[0]["ste"] if self.runs[0]["bits"] is not None else "fp"

    @property
    def bits(self):
        return self.runs[0]["bits"]


def newest_per_seed(runs: list[Run]) -> list[Run]:
    """One run per seed: the newest start (provenance), then the later path."""
    by_seed = {}
    for run in sorted(runs, key=lambda r: (r.started or "", str(r.path))):
        by_seed[run["seed"]] = run
    return list(by_seed.values())


def blocks(runs: list[Run]) -> dict[tuple, list[Group]]:
    """{(model, data, experiment): its groups}: the runs that ran (finished or diverged, not debug runs), grouped by
    the keys that differ between them."""
    out = {}
    # tuning trials have their own section; a settled run is a figure's start, not a setting to compare
    ran = [r for r in runs if r.done and not r["debug"] and r.kind not in ("tune", "settle")]
    for where in dict.fromkeys(block_of(r) for r in ran):
        mine = [r for r in ran if block_of(r) == where]
        settings = [setting(r) for r in mine]
        keys = grouping_keys(settings, [bool(r.archived_from) for r in mine])
        usual = {k: majority([repr(s.get(k)) for s in settings]) for k in keys}
        by_key = {}
        for run, s in zip(mine, settings, strict=True):
            by_key.setdefault(tuple(repr(s.get(k)) for k in keys), []).append(run)
        groups = [
            Group(key, label(keys, setting(rs[0]), usual), newest_per_seed(rs)) for key, rs in by_key.items()
        ]
        out[where] = sorted(groups, key=lambda g: g.label)
    return out


def majority(values: list[str]) -> str | None:
    """The value most settings share when it is a strict majority, else None (then every group shows its own)."""
    (value, count), *_ = Counter(values).most_common(1)
    return value if count > len(values) / 2 else None


def block_of(run: Run) -> tuple:
    """Runs compared in one table: same model, data and experiment file (a pipeline's Figure 2 runs apart)."""
    return run["model"], run["data"], run.choices.get("experiment", run["experiment"])


PREFERRED = ("ste.name", "quant.bits", "wquant.name", "wquant.bits")  # always in a label when they differ


def grouping_keys(settings: list[dict], archived: list[bool] | None = None) -> list[str]:
    """The keys whose values differ between settings. A key a run's dir does not record is a value (an STE without
    ε); one an archived run (runs.csv: protocol columns only) does not record is unknown, not a difference. A key
    that is a copy of a kept one (quant.ste interpolates ste.name: equal values in every setting) is left out.
    Confounded keys with other values (an lr chosen per STE) both stay, so such groups differ in two keys and are
    never ordered as if one caused the difference."""
    archived = archived or [False] * len(settings)
    known = lambda k: {repr(t.get(k)) for t, a in zip(settings, archived, strict=True) if k in t or not a}  # noqa: E731
    differ = {k for s in settings for k in s if len(known(k)) > 1}
    order = sorted(
        differ, key=lambda k: (PREFERRED.index(k) if k in PREFERRED else len(PREFERRED), k.count("."), k)
    )
    kept, columns = [], set()
    for key in order:
        column = tuple(repr(s.get(key)) for s in settings)
        if column not in columns:
            kept.append(key)
            columns.add(column)
    return kept


def value_text(key: str, value) -> str:
    """A grouping value as a label shows it: floats to 3 significant digits, no bits as 'float'."""
    if key == "quant.bits" and value is None:
        return "float"
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def label(keys: list[str], s: dict, usual: dict) -> str:
    """'ste=relu, bits=2, lr=0.1': the preferred keys (STE, bits, ...) always, any other grouping key only where
    this group's value is not the block's most common one; 'all runs' when nothing differs."""
    shown = [k for k in keys if (k in PREFERRED or repr(s.get(k)) != usual[k])]
    shown = [k for k in shown if s.get(k) is not None or k == "quant.bits"]  # a float run has no STE
    parts = [f"{short(k)}={value_text(k, s.get(k))}" for k in shown]
    return ", ".join(parts) or "all runs"


def show(s: Stat, digits: int = 2) -> tuple[str, str]:
    """('93.10 ± 0.25', '[92.6, 93.6]') as the table shows an accuracy's Stat (n = 1: the value alone, its binomial
    CI); the interval is cut to [0, 100]."""
    if s.mean is None:
        return "—", "—"
    value = f"{s.mean:.{digits}f}" + (f" ± {s.std:.{digits}f}" if s.std is not None else "")
    if s.half is None:
        return value, "—"
    low, high = max(s.mean - s.half, 0.0), min(s.mean + s.half, 100.0)  # an accuracy in % stays in [0, 100]
    ci = f"[{low:.{digits}f}, {high:.{digits}f}]"
    return value, ci + (" (binomial, 1 run)" if s.how == "binomial" else "")


def loss_text(s: Stat) -> str:
    if s.mean is None:
        return "—"
    return f"{s.mean:.3g}" + (f" ± {s.std:.2g}" if s.std is not None else "")


def table(groups: list[Group]) -> str:
    """One row per group: n, final and best top-1 (mean ± std, 95 % CI), final train loss, what did not finish."""
    rows = []
    for g in groups:
        final, best, loss = stat(g, "val_acc"), stat(g, "val_acc_best"), stat(g, "train_loss")
        diverged = sum(r.status == "diverged" for r in g.runs)
        seeds = ", ".join(str(s) for s in sorted(r["seed"] for r in g.runs))
        rows.append([g.label, str(final.n) + (f" (+{diverged} diverged)" if diverged else ""), seeds,
                     *show(final), show(best)[0], loss_text(loss)])  # fmt: skip
    header = ["group", "n", "seeds", "final top-1 (%)", "95 % CI", "best top-1 (%)", "final train loss"]
    return md_table(header, rows)


def ordering(a: Group, b: Group) -> str | None:
    """'clipped_relu > relu: 3/3 seeds, +12.40 ± 2.10 pt (95 % CI, paired)' or '… not resolved …'."""
    d = difference(a, b)
    if d is None:
        return None
    if d.mean < 0:
        a, b, d = b, a, difference(b, a)
    seeds = f"{d.wins}/{d.pairs} seeds, " if d.pairs else ""
    if d.half is None:
        return (
            f"{a.label} vs {b.label}: {seeds}{d.mean:+.2f} pt, no interval (one run, test-set size unknown)"
        )
    interval = f"{d.mean:+.2f} ± {d.half:.2f} pt (95 % CI, {d.how})"
    if winner(a, b) is None:
        return f"{a.label} vs {b.label}: not resolved, {seeds}{interval}"
    return f"{a.label} > {b.label}: {seeds}{interval}"


def orderings(groups: list[Group]) -> list[str]:
    """Every pair of groups that differ in exactly one grouping key, ordered with its uncertainty."""
    lines = []
    for i, a in enumerate(groups):
        for b in groups[i + 1 :]:
            if sum(x != y for x, y in zip(a.key, b.key, strict=True)) == 1 and (line := ordering(a, b)):
                lines.append(line)
    return lines


def figures(where: tuple, groups: list[Group], out: Path) -> list[str]:
    """One figure per bit width of the block: val top-1 and train loss per epoch, a curve per group (mean, band
    min–max over seeds); colour by STE, line style by the group's rank among those of its STE."""
    parts = []
    for bits in dict.fromkeys(g.bits for g in groups):
        mine = [g for g in groups if g.bits == bits]
        curves = {g.label: [read_curves(r) for r in g.runs if r.status == "finished"] for g in mine}
        if not any(len(c) for cs in curves.values() for c in cs):
            continue  # archived runs: their metrics.csv is gone
        styles = {g.label: (g.ste, sum(h.ste == g.ste for h in mine[: mine.index(g)])) for g in mine}
        stem = "_".join(str(x) for x in where if x)  # model, data and the experiment file when there is one
        name = f"compare_{stem}_{'fp' if bits is None else f'{bits}bit'}.png"
        title = f"{where[0]} / {where[1]}, {'float' if bits is None else f'{bits}-bit'}: mean over seeds, band min–max"
        plot_curves(curves, ("val/acc", "train/loss"), out / name, title, styles=styles)
        parts.append(f"![{name}]({name})\n")
    return parts


def plural(n: int, word: str) -> str:
    return f"{n} {word}{'s' * (n != 1)}"


def compare_section(runs: list[Run], out: Path | None) -> str:
    """The report's first section: every (model, data, experiment) block compared by the keys that differ in it;
    with ``out`` None (the README block) the tables and orderings alone, no figures."""
    found = blocks(runs)
    if not found:
        return "## Comparison\n\nNo finished or diverged runs to compare.\n"
    parts = ["## Comparison\n", GUIDE] if out else []
    for where, groups in found.items():
        model, data, experiment = where
        name = f"{model} on {data}" + (f", experiment {experiment}" if experiment else "")
        n_runs = sum(len(g.runs) for g in groups)
        parts.append(
            f"{'### ' if out else ''}{name}: {plural(len(groups), 'group')}, {plural(n_runs, 'run')}\n"
        )
        parts.append(table(groups) + "\n")
        lines = orderings(groups)
        if lines:
            parts.append(
                "Orderings (pairs that differ in one key, final top-1):\n\n"
                + "\n".join(f"- {x}" for x in lines)
                + "\n"
            )
        parts += figures(where, groups, out) if out else []
    return "\n".join(parts)


GUIDE = (
    "Runs are grouped by the config values that differ between them (seed aside: runs equal in everything else are "
    "repeats of one group, one per seed; a repeated seed counts once, its newest run). Final and best top-1 and the "
    "final train loss are mean ± sample std over the finished runs; the 95 % CI is Student's t over seeds, or, for "
    "a single run, the binomial interval of its test accuracy (√(p(1−p)/N), N test images), labelled as such. "
    "Orderings compare groups that differ in one key: paired over shared seeds, else Welch's interval, where a "
    "single run against a repeated group takes the larger of its binomial variance and that group's seed variance "
    "(one run is at least as uncertain as one seed); “not resolved” when the interval contains 0.\n"
)
