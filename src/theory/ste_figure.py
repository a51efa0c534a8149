"""The STEs themselves, one panel each: ``python -m src.theory stes --out DIR`` writes DIR/stes.png.

Each panel draws, for b = 2 bits and α = 1 (L = 3 levels, clip point c = 3), the staircase σ_α (the forward), the
STE's surrogate μ (its own ``mu``) and μ′: the gradient that reaches x through ``quant_relu`` with that STE for an
upstream gradient of 1, computed by autograd on a grid, so the picture is the registry's backward, not a re-typed
formula. EWGS has no μ (its μ′ depends on the upstream gradient's sign): only μ′ is drawn.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from src.quant import STES, get_ste, quant_relu  # noqa: E402
from src.quant.ste import STE  # noqa: E402

BITS, ALPHA = 2, 1.0  # L = 3 levels: enough steps to see each STE's shape between and beyond them
GRID = (-1.0, 4.5, 1000)  # x from below 0 to past c = 3; the step 5.5/999 lands on no jump or kink exactly


def ste_curves(
    name: str, bits: int = BITS, alpha: float = ALPHA, grid=GRID
) -> dict[str, torch.Tensor | None]:
    """x, σ_α(x), μ(x) (None for an STE without one) and μ′(x) = ∂σ_α/∂x as the STE's backward gives it."""
    x = torch.linspace(*grid, dtype=torch.float64).requires_grad_(True)
    y = quant_relu(x, bits, alpha, name)
    (dmu,) = torch.autograd.grad(y, x, torch.ones_like(y))
    ste = get_ste(name)
    levels = 2**bits - 1
    has_mu = getattr(type(ste), "mu", None) is not getattr(STE, "mu", None)
    mu = ste.mu(x.detach(), torch.tensor(alpha, dtype=x.dtype), levels) if has_mu else None
    return {"x": x.detach(), "staircase": y.detach(), "mu": mu, "dmu": dmu}


def write_ste_figure(out: Path) -> Path:
    """One panel per registry STE (registry order) in out/stes.png."""
    names = list(STES)
    cols = 4
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.6 * rows), sharex=True, sharey=True)
    for ax, name in zip(axes.flat, names, strict=False):  # the grid may hold more panels than STEs
        curves = ste_curves(name)
        x = curves["x"].numpy()
        ax.plot(x, curves["staircase"].numpy(), color="#888888", lw=1.2, label="σ_α (forward)")
        if curves["mu"] is not None:
            ax.plot(x, curves["mu"].numpy(), color="tab:blue", lw=1.2, label="μ (surrogate)")
        ax.plot(x, curves["dmu"].numpy(), color="tab:orange", lw=1.2, label="μ′ (backward, autograd)")
        ax.set_title(name + ("" if curves["mu"] is not None else " (no μ; grad = 1)"), fontsize=9)
        ax.axvline((2**BITS - 1) * ALPHA, color="#cccccc", lw=0.8, ls=":")  # the clip point c
        ax.grid(alpha=0.3)
    for ax in axes.flat[len(names) :]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7, loc="upper left")
    fig.suptitle(f"STEs at b = {BITS} bits, α = {ALPHA:g} (clip point c = {(2**BITS - 1) * ALPHA:g}, dotted)")
    fig.tight_layout()
    out.mkdir(parents=True, exist_ok=True)
    path = out / "stes.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
