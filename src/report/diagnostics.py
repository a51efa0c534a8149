"""Inside the STE: per-layer diagnostics, STE disagreement and the descent probe, from metrics.csv.

Columns read (absent ones are skipped): ``diag/<layer>/{below,saturated,level_entropy,grad_norm}``,
``disagree/<ste>`` (cosine of this run's weight gradient with that STE's), ``descent/{coarse,random,fp}/<t>``
(Δ true loss at step length t) and ``descent/smooth_cos[_fp]``. Layers are in metrics.csv's column order, which is
the callback's: model order.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from src.report.figures import DIRECTIONS, plot_grid, plot_probe, ylabel
from src.report.runs import Run, read_curves
from src.report.sections import labelled_curves
from src.report.table1 import md_table, newest_per_seed, row_key, row_label, ste_column, ste_order

DIAG = ("saturated", "level_entropy", "below", "grad_norm")  # figure and table order; the two first
PREFIXES = ("diag", "disagree", "descent")
KINDS = ("table1", "wxa", "tuned")  # runs compared per STE; tuning trials (other lrs) and fig2/fig4 are not


def has_diagnostics(curve: pd.DataFrame) -> bool:
    """Whether a metrics.csv holds any diagnostic column."""
    return any(str(c).split("/")[0] in PREFIXES for c in curve.columns)


def layers(curves: list[pd.DataFrame]) -> list[str]:
    """The layers with diag/ columns, in first-seen column order (model order)."""
    return list(dict.fromkeys(c.split("/")[1] for curve in curves for c in curve if c.startswith("diag/")))


def present(curves: list[pd.DataFrame], columns) -> list[str]:
    """The columns any curve holds, in the given order."""
    return [c for c in columns if any(c in curve for curve in curves)]


def steps(curves: list[pd.DataFrame]) -> list[str]:
    """The probe's step lengths t (as written in the column names), ascending."""
    found = {c.split("/")[2] for curve in curves for c in curve if c.startswith("descent/coarse/")}
    return sorted(found, key=float)


def final(curves: list[pd.DataFrame], column: str) -> float | None:
    """Mean over the runs of each run's last logged value of ``column``; None when none logged it."""
    last = [c[column].dropna().iloc[-1] for c in curves if column in c and c[column].notna().any()]
    return sum(last) / len(last) if last else None


def descent_profile(curve: pd.DataFrame, epoch: int) -> pd.DataFrame:
    """The probe at one epoch: index step length t, one column per direction (coarse, random, fp)."""
    if epoch not in curve.index:
        return pd.DataFrame()
    row, found = curve.loc[epoch], {}
    for column in curve.columns:
        parts = str(column).split("/")
        if len(parts) == 3 and parts[0] == "descent" and parts[1] in DIRECTIONS and pd.notna(row[column]):
            found.setdefault(parts[1], {})[float(parts[2])] = float(row[column])
    return pd.DataFrame(found).sort_index()


def probe_epoch(curve: pd.DataFrame, first: bool = False) -> int | None:
    """The last (or first) epoch the descent probe ran at (its columns are empty between probes)."""
    probed = curve.filter(like="descent/coarse/").notna().any(axis=1)
    return int(probed[probed].index[0 if first else -1]) if probed.any() else None


def mean_profile(curves: list[pd.DataFrame]) -> pd.DataFrame:
    """The probe at each run's last probed epoch, averaged over the runs (per t and direction)."""
    profiles = [descent_profile(c, e) for c in curves if (e := probe_epoch(c)) is not None]
    profiles = [p for p in profiles if not p.empty]
    return pd.concat(profiles).groupby(level=0).mean() if profiles else pd.DataFrame()


def show(x: float | None) -> str:
    return "—" if x is None or pd.isna(x) else f"{x:.3g}"


def figure(plot, name: str, out: Path, *args, **kwargs) -> str:
    """Draw one PNG beside report.md and return its markdown link."""
    plot(*args, out / name, **kwargs)
    return f"![{name}]({name})\n"


def columns(prefix: str, curves: list[pd.DataFrame]) -> list[str]:
    """The logged columns of one diagnostic: per layer (diag/<layer>/<m>), per paper STE (disagree/<ste>), or the
    descent probe over epochs (descent/coarse/<t> and the smoothed-loss slopes)."""
    if prefix == "disagree":
        return present(curves, [f"disagree/{s}" for s in ste_order([])])
    if prefix == "descent":
        smooth = ["descent/smooth_slope", "descent/smooth_slope_fp"]  # the cosines: smooth_table, beside 1/√d
        return present(curves, [f"descent/coarse/{t}" for t in steps(curves)] + smooth)
    return present(curves, [f"diag/{layer}/{prefix}" for layer in layers(curves)])


CAPTIONS = {m: ylabel(m) for m in DIAG} | {
    "disagree": "cosine of the weight gradient with each paper STE's",
    "descent": "descent probe over epochs (Δ loss along the coarse gradient; smoothed-loss slope and cosine)",
}


def metric_figures(found: dict[tuple, dict[str, list[pd.DataFrame]]], out: Path) -> list[str]:
    """One figure per diagnostic over every group (a row per group, a panel per layer), then the descent probe's
    Δ loss against step length at the last probe (a panel per group and STE)."""
    links = []
    for prefix, caption in CAPTIONS.items():
        rows = {}
        for key, by_ste in found.items():
            cols = columns(prefix, [c for group in by_ste.values() for c in group])
            if cols:
                rows[group_title(key)] = (by_ste, cols)
        if rows:
            links.append(figure(plot_grid, f"{prefix}.png", out, rows, title=f"Inside the STE: {caption}"))
    profiles = {
        f"{group_title(key)} · {ste}": p
        for key, by_ste in found.items()
        for ste, group in by_ste.items()
        if not (p := mean_profile(group)).empty
    }
    if profiles:
        links.append(
            figure(plot_probe, "probe.png", out, profiles, title="Δ loss against step length, last probe")
        )
    return links


def group_title(key: tuple) -> str:
    """'MNIST LeNet5, wfa2 (tag=tuned), stage tuned' for a (row, stage, wa) group key."""
    *row, stage, wa = key
    data, model, width = row_label(tuple(row))  # width: '2' or '2 (tag=tuned)'; wa names the bits already
    variant = width.partition(" ")[2]
    return (
        f"{data} {model}, {wa}" + (f" {variant}" if variant else "") + (f", stage {stage}" if stage else "")
    )


def layer_table(by_ste: dict[str, list[pd.DataFrame]]) -> str:
    """Final epoch, mean over seeds: per STE and layer, each diagnostic."""
    curves = [c for group in by_ste.values() for c in group]
    metrics = [m for m in DIAG if present(curves, [f"diag/{layer}/{m}" for layer in layers(curves)])]
    rows = [
        [ste, layer, *(show(final(group, f"diag/{layer}/{m}")) for m in metrics)]
        for ste, group in by_ste.items()
        for layer in layers(group)
    ]
    return md_table(["STE", "layer", *(ylabel(m) for m in metrics)], rows)


def agreement_table(by_ste: dict[str, list[pd.DataFrame]]) -> str:
    """Final epoch, mean over seeds: per STE the cosine of its weight gradient with each paper STE's."""
    curves = [c for group in by_ste.values() for c in group]
    cols = present(curves, [f"disagree/{s}" for s in ste_order([])])
    header = [f"vs {c.split('/')[1]}" if c.startswith("disagree/") else c.split("/")[1] for c in cols]
    rows = [[ste, *(show(final(group, c)) for c in cols)] for ste, group in by_ste.items()]
    return md_table(["STE", *header], rows) if cols else ""


def slope_ci(group: list[pd.DataFrame], column: str) -> str:
    """The smoothed loss's slope at the last probe, mean over seeds ± 1.96 SE (the runs' own SEs over their
    antithetic pairs, combined as independent: √(Σ SE²)/n); '—' when not logged."""
    mean, ses = final(group, column), [final([c], f"{column}_se") for c in group if column in c]
    if mean is None:
        return "—"
    if not ses or None in ses:
        return f"{mean:.3g} (no SE logged)"
    half = 1.96 * math.sqrt(sum(s**2 for s in ses)) / len(ses)
    verdict = "descends" if mean + half < 0 else "ascends" if mean - half > 0 else "not resolved"
    return f"{mean:.3g} ± {half:.2g} ({verdict})"


def smooth_table(by_ste: dict[str, list[pd.DataFrame]]) -> str:
    """Per STE at the last probe: the slope of the Gaussian-smoothed loss along −coarse and −FP-ReLU gradient with
    its 95 % interval (unbiased), and the cosines beside their noise level 1/√d; '' without the probe."""
    if not any("descent/smooth_slope" in c for group in by_ste.values() for c in group):
        return ""
    rows = [
        [ste, slope_ci(group, "descent/smooth_slope"), slope_ci(group, "descent/smooth_slope_fp"),
         show(final(group, "descent/smooth_cos")), show(final(group, "descent/smooth_cos_fp")),
         show(final(group, "descent/smooth_cos_noise"))]
        for ste, group in by_ste.items()
    ]  # fmt: skip
    header = ["STE", "slope along −coarse (95 % CI)", "slope along −FP ReLU (95 % CI)", "cos(ĝ, coarse)",
              "cos(ĝ, FP ReLU)", "noise 1/√d"]  # fmt: skip
    return md_table(header, rows)


def probe_table(profiles: dict[str, pd.DataFrame]) -> str:
    """Δ loss per label and step length t, one column per direction."""
    directions = [d for d in DIRECTIONS if any(d in p for p in profiles.values())]
    rows = [
        [label, f"{t:g}", *(show(p.loc[t].get(d)) for d in directions)]
        for label, p in profiles.items()
        for t in p.index
    ]
    return md_table(["run", "t", *(f"Δ loss, {d}" for d in directions)], rows)


def groups(table: pd.DataFrame) -> dict[tuple, dict[str, list[pd.DataFrame]]]:
    """{(data, model, bits, *variant, stage, wa): {STE: curves of its seeds}} over the runs with diagnostics; a
    repeated seed counts once (its newest run), as in Table 1."""
    mine = table[table["kind"].isin(KINDS) & table["status"].isin(["finished", "diverged"])]
    if mine.empty:
        return {}
    mine = mine.assign(
        group=[(*row_key(r), (r["run"].stage or ("",))[0], r["wa"]) for _, r in mine.iterrows()],
        column=[ste_column(r) for _, r in mine.iterrows()],
    )
    out: dict[tuple, dict[str, list[pd.DataFrame]]] = {}
    for _, r in newest_per_seed(mine, ("group", "column")).sort_values("path").iterrows():
        if has_diagnostics(curve := read_curves(r["run"])):
            out.setdefault(r["group"], {}).setdefault(r["column"], []).append(curve)
    return {k: {s: g[s] for s in ste_order(g) if s in g} for k, g in out.items()}


def group_part(key: tuple, by_ste: dict[str, list[pd.DataFrame]]) -> list[str]:
    """One (row, stage, wa) group: its layers and final-epoch tables (its curves are in the figures above)."""
    profiles = {ste: p for ste, group in by_ste.items() if not (p := mean_profile(group)).empty}
    curves = [c for group in by_ste.values() for c in group]
    parts = [
        f"### {group_title(key)}\n",
        f"Layers (model order): {', '.join(layers(curves)) or 'none logged'}.\n",
    ]
    parts += [f"Final epoch, mean over seeds ({counted_seeds(by_ste)}):\n", layer_table(by_ste) + "\n"]
    agreement = agreement_table(by_ste)
    lead = "Cosines at the final epoch, mean over seeds (weight gradient vs each paper STE's; smoothed loss):\n\n"
    parts += [f"{lead}{agreement}\n"] if agreement else []
    smooth = smooth_table(by_ste)
    lead = ("The Gaussian-smoothed loss at the last probe: its slope along the unit negative gradient (negative: "
            "that direction descends; unbiased, with its 95 % interval) and the cosines, which only mean something "
            "well above 1/√d, the cosine of two random directions in the d probed weights:\n\n")  # fmt: skip
    parts += [f"{lead}{smooth}\n"] if smooth else []
    parts += [f"Descent probe at the last probed epoch:\n\n{probe_table(profiles)}\n"] * bool(profiles)
    return parts


def counted_seeds(by_ste: dict[str, list[pd.DataFrame]]) -> str:
    """'identity 3 runs, relu 3 runs'."""
    return ", ".join(f"{ste} {len(group)} run{'s' * (len(group) != 1)}" for ste, group in by_ste.items())


def start_probe(kind: str, runs: list[Run], out: Path) -> list[str]:
    """Figure 2 or 4's runs: the descent probe around the starting minimum — its first probe, after one epoch at
    lr 1e-5 (the probe batch is gathered during that epoch), which leaves the weights at the minimum."""
    mine = [r for r in runs if r.kind == kind and r.status != "interrupted"]
    curves = labelled_curves(mine, lambda r: r["tag"] or r["run_name"])
    firsts = {label: (curve, probe_epoch(curve, first=True)) for label, _, curve in curves}
    profiles = {label: descent_profile(c, e) for label, (c, e) in firsts.items() if e is not None}
    if not profiles:
        return []
    number = kind.removeprefix("fig")
    epochs = ", ".join(sorted({str(e) for _, e in firsts.values() if e is not None}))
    title = f"Figure {number} runs: Δ loss against step length at the starting minimum (first probe, epoch {epochs})"
    link = figure(plot_probe, f"probe_{kind}.png", out, profiles, title=title)
    return [
        f"### Figure {number}: the probe around the starting minimum\n",
        link,
        probe_table(profiles) + "\n",
    ]


INTRO = (
    "Diagnostics logged by the runs, one colour per STE, mean over seeds with a min–max band: per "
    "quantized activation (model order) the fraction of pre-activations at or below 0 and above the clip point "
    "(saturated), the entropy of the level occupancy (bits) and the gradient norm reaching it; the cosine between "
    "this run's weight gradient and each paper STE's on a fixed probe batch; and the descent probe: the change of "
    "the true (quantized) loss along the normalised negative coarse gradient, a random direction and the FP ReLU "
    "gradient, and the slope of a Gaussian-smoothed loss along the coarse gradient (the deep-net counterpart "
    "of the paper's ⟨E[g], ∇f⟩ > 0, Yin et al. 2019, Lemmas 4–9).\n"
)


def diagnostics_section(table: pd.DataFrame, runs: list[Run], out: Path) -> str:
    """'Inside the STE': per group of runs compared per STE, then the Figure 2 / 4 starting-point probes."""
    found = groups(table)
    parts = metric_figures(found, out) + [p for key, by_ste in found.items() for p in group_part(key, by_ste)]
    parts += start_probe("fig2", runs, out) + start_probe("fig4", runs, out)
    if not parts:
        return "No STE diagnostics in the runs' metrics.csv (diag/, disagree/ or descent/ columns).\n"
    return "\n".join(["## Inside the STE\n", INTRO, *parts])
