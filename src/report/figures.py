"""Figures as small PNGs (matplotlib, Agg): per-epoch curves with a seed band, and final accuracy as bars."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

DPI = 100  # ~40 runs' figures stay well under 2 MB
LABELS = {
    "train/loss": "training loss",
    "val/acc": "validation accuracy (%)",
    "val/loss": "validation loss",
    "val/population_loss": "population loss f(v, w)",
}


def color(label: str) -> str | None:
    """One colour per registry STE in every figure (curves and bars agree); other labels take the default cycle."""
    from src.quant.ste import STES

    names = list(STES)
    return f"C{names.index(label) % 10}" if label in names else None


def save(fig, path: Path, n_labels: int) -> Path:
    """Legend below the axes (never over data), then a small PNG."""
    handles, labels = fig.axes[0].get_legend_handles_labels()
    if handles:
        ncol = max(
            1, min(n_labels, int(fig.get_figwidth() // 1.5))
        )  # ~1.5 in a label: never wider than the figure
        fig.legend(handles, labels, loc="outside lower center", ncol=ncol, fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def plot_curves(
    groups: dict[str, list[pd.DataFrame]], metrics: tuple[str, ...], path: Path, title: str, switch=None
) -> Path:
    """One panel per metric, per label the mean over its runs' curves with a min–max band; x = epoch, 0 = start.

    ``switch``: the epoch where the learning rate leaves its hold (Figure 2's 1e-5 phase), drawn dashed.
    """
    fig, axes = plt.subplots(
        1, len(metrics), figsize=(4.6 * len(metrics), 3.6), squeeze=False, layout="constrained"
    )
    for ax, metric in zip(axes[0], metrics, strict=True):
        for label, curves in groups.items():
            series = [c[metric].dropna() for c in curves if metric in c]
            if not any(len(s) for s in series):
                continue
            stats = pd.concat(series, axis=1).agg(["mean", "min", "max"], axis=1)  # epoch × (mean, min, max)
            line = ax.plot(
                stats.index,
                stats["mean"],
                marker="o" if len(stats) < 30 else None,
                ms=3,
                label=label,
                color=color(label),
            )
            if len(series) > 1:
                ax.fill_between(stats.index, stats["min"], stats["max"], color=line[0].get_color(), alpha=0.2)
        if switch is not None:
            ax.axvline(switch, color="gray", linestyle="--", linewidth=1, label=f"lr switch (epoch {switch})")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set(xlabel="epoch", ylabel=LABELS.get(metric, metric))
        if metric == "val/population_loss":
            ax.set_yscale("log")  # the two-layer model's loss falls over orders of magnitude
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=10)
    return save(fig, path, len(groups) + (switch is not None))


def plot_bars(bars: pd.DataFrame, order: list[str], path: Path, title: str) -> Path:
    """Grouped bars: ``bars`` has one row per bit width and columns ("mean" | "std", STE); STEs in ``order``."""
    order = [s for s in order if s in bars["mean"]]
    means, stds = bars["mean"][order], bars["std"][order]
    width = max(4.6, 1.2 + 1.1 * len(bars) * max(len(means.columns), 1) / 2)  # the title must fit
    fig, ax = plt.subplots(figsize=(width, 3.6), layout="constrained")
    colors = [color(s) for s in order]
    means.plot.bar(
        yerr=stds.fillna(0), ax=ax, capsize=3, rot=0, legend=False, width=0.8,
        color=colors if None not in colors else None,
    )  # fmt: skip
    low = means.min().min()
    ax.set_ylim(max(0, low - 10) if pd.notna(low) else 0, 100)  # accuracy in %: zoom on the differences
    ax.set(xlabel="bit width", ylabel="final validation accuracy (%)")
    ax.grid(axis="y", alpha=0.3)
    fig.suptitle(title, fontsize=10)
    return save(fig, path, len(means.columns))
