"""Figures as small PNGs (matplotlib, Agg): per-epoch curves with a seed band, and final accuracy as bars."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from src.quant.ste import STES  # noqa: E402

DPI = 80  # ~40 runs' figures stay well under 2 MB; docs/results under 4 MB
plt.rcParams["figure.dpi"] = DPI  # lay text out at the resolution it is saved at (legends never overlap)
LABELS = {
    "train/loss": "training loss",
    "val/acc": "validation accuracy (%)",
    "val/loss": "validation loss",
    "val/population_loss": "population loss f(v, w)",
    # the diagnostics, by the last part of their name (diag/<layer>/<name>, descent/<name>)
    "below": "fraction at or below 0",
    "saturated": "fraction saturated (above c)",
    "level_entropy": "level entropy (bits)",
    "grad_norm": "gradient norm at the pre-activation",
    "smooth_cos": "cos(smoothed-loss gradient, coarse)",
    "smooth_cos_fp": "cos(smoothed-loss gradient, FP ReLU)",
    "disagree": "cosine of the weight gradients",
    "descent": "Δ loss (quantized forward)",
}


# 16 colours that stay distinct from one another (Kelly's and Tableau's, light tints left out): one per registry
# STE, in registry order, so every figure gives an STE the same colour; later names take the next free one.
PALETTE = (
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
    "#bcbd22", "#17becf", "#000000", "#a6761d", "#f0027f", "#386cb0", "#66a61e", "#b15928",
)  # fmt: skip
STYLES = ("-", "--", ":", "-.")  # a second, third, ... curve of one STE (another bit width or knob)


def color(label: str) -> str | None:
    """The STE's colour in every figure ('fp' is black-grey); None (matplotlib's cycle) for other labels."""
    names = list(STES)
    if label == "fp":
        return "#444444"
    return PALETTE[names.index(label) % len(PALETTE)] if label in names else None


def save(fig, path: Path, n_labels: int) -> Path:
    """Legend below the axes (never over data, never cut: the saved box grows to hold it), then a small PNG."""
    legend = {}  # label -> handle over all panels: a label missing from the first panel still gets its entry
    for ax in fig.axes:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            legend.setdefault(label, handle)
    handles, labels = list(legend.values()), list(legend)
    if handles:
        longest = max(len(s) for s in labels)
        ncol = max(
            1, min(n_labels, int(fig.get_figwidth() * 12 // max(longest + 4, 10)))
        )  # ~12 chars an inch
        fig.legend(handles, labels, loc="outside lower center", ncol=ncol, fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return path


def ylabel(metric: str) -> str:
    """The axis label of a metric: its own, else its last part's ('diag/0/saturated' -> saturated's), else its
    first part's ('disagree/relu' -> disagree's), else the name itself."""
    parts = metric.split("/")
    return LABELS.get(metric) or LABELS.get(parts[-1]) or LABELS.get(parts[0], metric)


def panels(n: int, cols: int = 4):
    """n panels in rows of at most ``cols`` (4.6 × 3.6 in each); the spare axes of the last row are hidden."""
    ncols, nrows = min(n, cols), -(-n // cols)
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(4.6 * ncols, 3.6 * nrows), squeeze=False, layout="constrained"
    )
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, axes.flat[:n]


def draw(ax, groups: dict[str, list[pd.DataFrame]], metric: str, styles: dict | None = None) -> None:
    """On one axis, per label the mean over its runs' curves of ``metric`` with a min–max band (x = epoch)."""
    for label, curves in groups.items():
        series = [c[metric].dropna() for c in curves if metric in c]
        if not any(len(s) for s in series):
            continue
        stats = pd.concat(series, axis=1).agg(["mean", "min", "max"], axis=1)  # epoch × (mean, min, max)
        ste, k = (styles or {}).get(label, (label, 0))
        line = ax.plot(stats.index, stats["mean"], marker="o" if len(stats) < 30 else None, ms=3, label=label,
                       color=color(ste), linestyle=STYLES[k % len(STYLES)])  # fmt: skip
        if len(series) > 1:
            ax.fill_between(stats.index, stats["min"], stats["max"], color=line[0].get_color(), alpha=0.2)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)


def plot_curves(
    groups: dict[str, list[pd.DataFrame]],
    metrics: tuple[str, ...],
    path: Path,
    title: str,
    switch=None,
    titles: tuple[str, ...] | None = None,
    styles: dict[str, tuple[str | None, int]] | None = None,
    val_examples: int | None = None,
) -> Path:
    """One panel per metric (rows of 4), per label the mean over its runs' curves with a min–max band; x = epoch,
    0 = start.

    ``switch``: the epoch where the learning rate leaves its hold (Figure 2's 1e-5 phase), drawn dashed.
    ``titles``: one per panel (e.g. the layer a diagnostic belongs to).
    ``styles``: label -> (STE, k): the STE's colour and the k-th line style (default: the label as STE, solid).
    ``val_examples``: the N test images behind val/acc. Figures 2 and 4 judge a change against test-set noise, so
    each val/acc point gets its 95 % binomial interval as a band and the training loss axis starts at 0: a
    0.5-point wiggle no longer fills the panel.
    """
    fig, axes = panels(len(metrics))
    for i, (ax, metric) in enumerate(zip(axes, metrics, strict=True)):
        draw(ax, groups, metric, styles)
        if val_examples and metric == "val/acc":
            ci_band(ax, val_examples)
        if val_examples and metric == "train/loss":
            ax.set_ylim(bottom=0)
        if switch is not None:
            ax.axvline(switch, color="gray", linestyle="--", linewidth=1, label=f"lr switch (epoch {switch})")
        ax.set(xlabel="epoch", ylabel=ylabel(metric), title=titles[i] if titles else "")
        if metric == "val/population_loss":
            ax.set_yscale("log")  # the two-layer model's loss falls over orders of magnitude
    fig.suptitle(title, fontsize=10)
    return save(fig, path, len(groups) + (switch is not None))


def ci_band(ax, n: int) -> None:
    """Around each accuracy curve on ``ax``, its points' 95 % binomial interval, ±1.96·√(p(1−p)/n)."""
    for line in ax.get_lines():
        x, p = line.get_xdata(), np.asarray(line.get_ydata()) / 100
        half = 196 * np.sqrt(p * (1 - p) / n)  # in points
        ax.fill_between(x, 100 * p - half, 100 * p + half, color=line.get_color(), alpha=0.15, linewidth=0)
    ax.fill_between([], [], color="gray", alpha=0.15, label=f"95 % CI ({n:,} test images)")


def plot_grid(
    rows: dict[str, tuple[dict[str, list[pd.DataFrame]], list[str]]], path: Path, title: str
) -> Path:
    """One figure for one diagnostic over many settings: a row per setting (its title), a panel per column
    (its layers), the setting's STEs as curves. ``rows[title] = (curves by STE, columns)``."""
    ncols = max(len(cols) for _, cols in rows.values())
    fig, axes = plt.subplots(len(rows), ncols, figsize=(2.9 * ncols, 2.3 * len(rows)), squeeze=False,
                             layout="constrained")  # fmt: skip
    for r, (row_title, (groups, columns)) in enumerate(rows.items()):
        for c, ax in enumerate(axes[r]):
            if c >= len(columns):
                ax.set_visible(False)
                continue
            draw(ax, groups, columns[c])
            ax.set_title(f"{row_title} · {panel_name(columns[c])}", fontsize=7)
            ax.set_xlabel("epoch" if r == len(rows) - 1 else "", fontsize=7)
            ax.tick_params(labelsize=6)
    fig.supylabel(ylabel(next(iter(rows.values()))[1][0]), fontsize=8)
    fig.suptitle(title, fontsize=9)
    return save(fig, path, max(len(g) for g, _ in rows.values()))


def panel_name(column: str) -> str:
    """A diagnostic column as a panel names it: 'diag/4.body.2/below' -> '4.body.2', 'disagree/relu' -> 'vs relu',
    'descent/coarse/0.1' -> 't = 0.1', 'descent/smooth_slope' -> 'smooth_slope'."""
    parts = column.split("/")
    if parts[0] == "diag":
        return parts[1]
    if parts[0] == "disagree":
        return f"vs {parts[1]}"
    return f"t = {parts[2]}" if len(parts) == 3 else parts[-1]


# the descent probe's directions: the run's coarse gradient, a random one, the float ReLU's gradient
DIRECTIONS = {"coarse": ("k", "-"), "fp": ("C7", "--"), "random": ("C7", ":")}


def plot_probe(probes: dict[str, pd.DataFrame], path: Path, title: str) -> Path:
    """One panel per label: Δ true loss against the step length t (log x), one line per direction in DIRECTIONS.

    ``probes[label]``: index t, a column per direction (as ``descent_profile`` returns).
    """
    fig, axes = panels(len(probes))
    for ax, (label, probe) in zip(axes, probes.items(), strict=True):
        for direction, (colour, style) in DIRECTIONS.items():
            if direction in probe:
                ax.plot(probe.index, probe[direction], style, marker="o", ms=3, color=colour, label=direction)
        ax.axhline(0, color="gray", linewidth=0.8)
        ax.set_xscale("log")
        ax.set_yscale("symlog", linthresh=1e-3)  # small steps change the loss by ~1e-3, long ones by ~1
        ax.set(xlabel="step length t", ylabel="Δ loss (quantized forward, symlog)", title=label)
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=10)
    return save(fig, path, len(DIRECTIONS))


def plot_dots(means: pd.DataFrame, stds: pd.DataFrame, order: list[str], path: Path, title: str) -> Path:
    """Final accuracy as dots: one row of ``means`` per bit width (x), one column per STE (offset dots, its colour);
    an error bar (± std) only where std exists (n ≥ 2): a single run draws none, not a zero-length one."""
    order = [s for s in order if s in means]
    fig, ax = plt.subplots(figsize=(max(4.6, 1.5 + 1.2 * len(means)), 3.6), layout="constrained")
    width = 0.6 / max(len(order), 1)
    for j, ste in enumerate(order):
        x = [i + (j - (len(order) - 1) / 2) * width for i in range(len(means))]
        err = stds[ste].to_numpy(dtype=float) if ste in stds else None
        ax.errorbar(x, means[ste], yerr=err, fmt="o", capsize=3, color=color(ste), label=ste)
    ax.set_xticks(range(len(means)), [str(b) for b in means.index])
    ax.set(xlabel="bit width", ylabel="final validation accuracy (%)")
    ax.grid(axis="y", alpha=0.3)
    fig.suptitle(title, fontsize=10)
    return save(fig, path, len(order))
