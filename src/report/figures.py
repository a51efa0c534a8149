"""Per-epoch curves as PNG (matplotlib, Agg): one figure function for Figures 2, 4 and the two-layer runs."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from src.report.runs import Curves  # noqa: E402

LABELS = {
    "train/loss": "training loss",
    "val/acc": "validation accuracy (%)",
    "val/loss": "validation loss",
    "val/population_loss": "population loss f(v, w)",
}


def plot_curves(
    curves: dict[str, Curves], metrics: tuple[str, ...], path: Path, title: str, switch: int | None = None
) -> Path:
    """One panel per metric, one line per labelled run, x = epoch (0 = the starting point); saved to path.

    ``switch``: the epoch where the learning rate leaves its hold (Figure 2's 1e-5 phase), drawn dashed.
    """
    fig, axes = plt.subplots(1, len(metrics), figsize=(5.2 * len(metrics), 3.8), squeeze=False)
    for ax, metric in zip(axes[0], metrics, strict=True):
        for label, curve in curves.items():
            xs, ys = curve.series(metric)
            if xs:
                ax.plot(xs, ys, marker="o" if len(xs) < 30 else None, markersize=3, label=label)
        if switch is not None:
            ax.axvline(switch, color="gray", linestyle="--", linewidth=1, label=f"lr switch (epoch {switch})")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.set_ylabel(LABELS.get(metric, metric))
        if metric == "val/population_loss":
            ax.set_yscale("log")  # the two-layer model's loss falls over orders of magnitude
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
