"""The report's evidence: code, hardware, libraries, data source, protocol actually run, and wall times."""

from __future__ import annotations

from collections import Counter, defaultdict

from src.paper import TABLE2
from src.provenance import git_commit
from src.report.runs import Run, read_curves
from src.report.table1 import NAMES, md_table

KINDS = {
    "fp": "FP pretraining",
    "table1": "Table 1",
    "fig2": "Figure 2",
    "fig4": "Figure 4",
    "settle": "minima trained on",
    "two_layer": "two-layer",
    "wxa": "weights × activations",
    "tune": "tuning trials",
    "tuned": "tuned",
}
# Yin et al. 2019, Table 2's epochs (Table 1's runs, and the tuned runs retrained on its schedule) and the
# instability runs' lengths (§4.2, Figures 2 and 4); none for FP pretraining
PAPER_EPOCHS = {(kind, m): p["epochs"] for kind in ("table1", "tuned") for m, p in TABLE2.items()}
PAPER_EPOCHS |= {("fig2", "resnet20"): 220, ("fig4", "resnet20"): 200}
JPEG_NOTE = (
    "CIFAR-10 was read with checksums unverified: a local copy such as the CIFAR-10 JPEG rebuild, whose pixels "
    "differ by ≈6/255 from the original, so accuracies may sit slightly lower than on the original data."
)


def counted(values) -> str:
    """Distinct values with how many runs hold each: 'a (3 runs), b (1 run)'."""
    counts = Counter(values)
    return ", ".join(f"{v} ({k} run{'s' * (k != 1)})" for v, k in counts.most_common())


def code_and_hardware(runs: list[Run]) -> list[str]:
    """Bullets: git commits (flagging +dirty), hardware, and a table of library versions."""
    commits = [r.provenance.get("git_commit", "unknown") for r in runs]
    lines = [f"- Git commit(s): {counted(f'`{c}`' for c in commits)}"]
    if any(c.endswith("+dirty") for c in commits):
        lines.append("  - ⚠ `+dirty`: those runs ran with uncommitted changes to tracked files.")
    hw = [r.provenance.get("hardware", {}) for r in runs]
    machines = (
        f"{h.get('cpu', '?')}, {h.get('cpu_count', '?')} cores (torch threads {h.get('torch_threads', '?')}), "
        f"GPU: {h.get('gpu', '?')}"
        for h in hw
    )
    lines.append(f"- Hardware: {counted(machines)}")
    packages = dict.fromkeys(p for r in runs for p in r.provenance.get("versions", {}))
    rows = [[p, counted(r.provenance.get("versions", {}).get(p, "?") for r in runs)] for p in packages]
    return lines + ["", md_table(["package", "version (runs)"], rows)] if rows else lines


def data_sources(runs: list[Run], pipeline: dict) -> list[str]:
    """Per dataset: data root(s) and whether checksums were verified; the JPEG-rebuild note where it applies."""
    by_data = defaultdict(list)
    for run in runs:
        by_data[run["data"]].append(run)
    rows, lines = [], []
    for data, group in sorted(by_data.items(), key=lambda kv: str(kv[0])):
        if data == "gaussian":
            rows.append([data, "synthetic (generated from the seed)", "—"])
            continue
        verified = [r.provenance.get("data_checksums_verified") for r in group]
        rows.append(
            [str(data), counted(r.provenance.get("data_root", "?") for r in group), counted(verified)]
        )
        if data == "cifar10" and not all(v is True for v in verified):
            lines.append(f"- {JPEG_NOTE}")
    if pipeline.get("data_note"):
        lines.append(f"- Pipeline data note: “{pipeline['data_note']}”")
    return [md_table(["dataset", "data root (runs)", "checksums verified (runs)"], rows), "", *lines]


def deviations(runs: list[Run], kind: str, model: str) -> str:
    """Whether a group ran the paper's protocol, or why not (epochs, data subsets)."""
    paper = PAPER_EPOCHS.get((kind, model))
    if paper is None:
        return "paper states no protocol"
    why = sorted({f"max_epochs {r['max_epochs']} ≠ {paper}" for r in runs if r["max_epochs"] != paper})
    why += sorted({f"stopped at epoch {r['epochs']}" for r in runs if r["epochs"] != r["max_epochs"]})
    why += sorted({f"train_subset {r['train_subset']}" for r in runs if r["train_subset"] is not None})
    subsets = {r.config.get("data", {}).get("val_subset") for r in runs} - {None}
    why += [f"val_subset {s}" for s in sorted(subsets)]
    return "yes" if not why else "**no**: " + "; ".join(why)


def call(node: dict | None) -> str:
    """A config node with ``_target_`` as 'Name(arg=value, ...)', nested nodes included (hold_then's ``then``)."""
    node = node or {}
    args = (f"{k}={call(v) if isinstance(v, dict) else v}" for k, v in node.items() if not k.startswith("_"))
    return f"{str(node.get('_target_', '?')).rsplit('.', 1)[-1]}({', '.join(args)})"


def settings(run: Run) -> str:
    """The training recipe from config.yaml: optimizer, schedule, batch size, augmentation."""
    data = run.config.get("data", {})
    aug = f"crop pad {data.get('crop_padding')}, hflip {data.get('hflip')}" if data.get("augment") else "none"
    return (
        f"{call(run.config.get('optimizer'))}; {call(run.config.get('scheduler'))}; "
        f"batch {data.get('batch_size')}; augmentation {aug}"
    )


def protocol(runs: list[Run]) -> str:
    """Per group (section, model, data): runs, epochs run vs max_epochs, subsets, paper protocol, recipe."""
    groups = defaultdict(list)
    for run in runs:
        groups[(run.kind, run["model"], run["data"])].append(run)
    rows = [
        [
            f"{KINDS[kind]}: {NAMES.get(model, model)} / {NAMES.get(data, data)}",
            str(len(group)),
            counted(r["epochs"] for r in group),
            counted(r["max_epochs"] for r in group),
            counted(str(r["train_subset"]) for r in group),
            deviations(group, kind, model),
            hours(sum(r["wall_time_s"] or 0 for r in group)),
            counted(settings(r) for r in group),
        ]
        for (kind, model, data), group in sorted(groups.items(), key=lambda kv: tuple(map(str, kv[0])))
    ]
    header = [
        "group",
        "runs",
        "epochs run",
        "max_epochs",
        "train_subset",
        "paper's protocol",
        "wall time",
        "recipe",
    ]
    return md_table(header, rows)


def wall_times(runs: list[Run], pipeline: dict) -> list[str]:
    """Wall time per pipeline stage (pipeline.json) and the summed training time of the runs."""
    lines = [f"- Summed wall time of the {len(runs)} runs: {hours(sum(r['wall_time_s'] or 0 for r in runs))}"]
    stages = pipeline.get("stages", {})
    if not stages:
        return lines + ["- No pipeline.json: no per-stage wall times."]
    # every attempt a skip: the stage's runs were found done, i.e. trained outside this record (by hand, or by a
    # pipeline.json since replaced); their time is in the runs' sum above, not in the stage's 0
    found = "found done (trained outside this record)"
    rows = [
        [s, hours(v.get("wall_time_s") or 0), found if v.get("skipped") else "ran"] for s, v in stages.items()
    ]
    total = hours(sum(v.get("wall_time_s") or 0 for v in stages.values()))
    return lines + [
        f"- Pipeline stages (total {total}):",
        "",
        md_table(["stage", "wall time", "status"], rows),
    ]


def hours(seconds: float) -> str:
    """Seconds as '12.3 s', '4.5 min' or '1.25 h'."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    return f"{seconds / 60:.1f} min" if seconds < 3600 else f"{seconds / 3600:.2f} h"


def resumed(runs: list[Run]) -> list[str]:
    """Bullets: every start (commit, time, host) of the runs that were started more than once."""
    lines = []
    for run in runs:
        starts = run.provenance.get("starts") or []
        if len(starts) > 1:
            each = "; ".join(
                f"{s.get('time_utc')} on {s.get('host')} at `{s.get('git_commit')}`" for s in starts
            )
            lines.append(f"- `{run['run_name']}` ({len(starts)} starts): {each}")
    return ["", "### Resumed runs", "", *lines] if lines else []


def archived(runs: list[Run]) -> list[str]:
    """Bullets: runs read from an earlier report's runs.csv (their dirs gone), with the code that made them and
    the code that made this report."""
    files = Counter(r.archived_from for r in runs if r.archived_from)
    made, curves = defaultdict(set), Counter()
    for run in runs:
        if run.archived_from:
            made[run.archived_from].add(str(run.provenance.get("git_commit")))
            curves[run.archived_from] += len(read_curves(run)) > 0
    kept = lambda f: f"curves of {curves[f]} from the curves.csv beside it" if curves[f] else "no curves"  # noqa: E731
    return [
        f"- ⚠ {k} runs read from the archived `{f}` (their run dirs are gone: final numbers, {kept(f)}, no per-layer "
        f"diagnostics): runs made by code `{', '.join(sorted(made[f]))}`, this report by code `{git_commit()}`"
        for f, k in files.items()
    ]


def provenance_section(runs: list[Run], pipeline: dict, profile: str, problems: list[str]) -> str:
    """The whole provenance section as markdown."""
    kinds = Counter(r.kind for r in runs)
    found = ", ".join(f"{KINDS[k]} {kinds[k]}" for k in KINDS if kinds[k])
    lines = ["## Provenance\n", f"- Profile: {profile}", f"- Runs found: {len(runs)} ({found or 'none'})"]
    lines += [f"- ⚠ Skipped: {p}" for p in problems]
    lines += archived(runs)
    lines += [
        f"- ⚠ Started but unfinished (no summary.json): `{r.path}`" for r in runs if r.status == "interrupted"
    ]
    if runs:
        lines += code_and_hardware(runs) + ["", "### Data", ""] + data_sources(runs, pipeline)
        lines += ["", "### Protocol actually run", "", protocol(runs), *resumed(runs)]
    lines += ["", "### Wall time", ""] + wall_times(runs, pipeline)
    return "\n".join(lines) + "\n"
