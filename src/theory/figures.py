"""Figures of the two-linear-layer model: the paper's Figure 1, and two additions beyond the paper (Algorithm 1
started near a spurious minimizer; Algorithm 1 converging to the global minimum).

The paper gives no dimensions, teacher or points (Yin et al. 2019, Figure 1); the choices here:
* m = 10 patches, n = 20 input dimensions. m > 1 is needed for the identity STE's instability (Lemma 9:
  ‖E g_id‖ ∝ (m − 1)), and a larger m leaves room for Prop. 1's condition (1ᵀv*)² < ((m+1)/2)‖v*‖², which a
  random N(0, I) teacher then meets; n > 2 gives the directions outside the plane of w and w*, which the
  expectations must average out and on which the samples of Figure 1 are noisy. Both are small enough for
  10⁴ exact steps of Algorithm 1 in well under a second.
* The teacher is ``make_teacher(10, 20, seed=0)`` (Prop. 1 holds, 1ᵀv* ≈ −2.73).
* Figure 1 uses the vanilla ReLU STE (the figure sits next to §3.1) at one point, v = v* + ½·N(0, I_m),
  θ(w, w*) = π/3, ‖w‖ = 0.7, where the population loss falls monotonically along −E g for η ∈ [0, 0.2]; each
  panel draws fresh samples (the paper's panels start at different losses).
* Figure (b) starts at distance ~0.05 from the spurious minimizer (v and θ), ‖w0‖ = 1; figure (c) at a random
  N(0, I) start redrawn until Theorem 2's conditions hold (‖w0‖ ≈ 5.7: the clipped ReLU's window 0 < x ≤ 1
  then catches few pre-activations, which is why it starts slower than the ReLU STE).
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from src.theory.cgd import coarse_gradient_descent  # noqa: E402
from src.theory.coarse import empirical_coarse_grad, empirical_loss, sample_inputs  # noqa: E402
from src.theory.landscape import (  # noqa: E402
    make_teacher,
    population_loss,
    spurious_minimizer,
    theorem2_start,
    vector_at_angle,
)

M, N_DIM, SEED = 10, 20, 0
FIG1_SIZES, FIG1_ETAS = (10, 50, 1000), np.linspace(0.0, 0.2, 401)
PAPER_STES = ("identity", "relu", "clipped_relu")
NEAR_START = 0.05  # figure (b): v0 = spurious v + 0.05·N(0, I), θ0 = π − 0.05, ‖w0‖ = 1
SPURIOUS_RUN = (0.05, 400)  # figure (b): Algorithm 1's η and iterations
GLOBAL_RUN = (0.1, 1000)  # figure (c): both STEs reach f < 1e-6 within ~750 steps
ADDITION = "addition beyond the paper"


def _gen(offset: int) -> torch.Generator:
    """A generator seeded SEED + offset: each random draw of the figures has its own stream."""
    return torch.Generator().manual_seed(SEED + offset)


def figure1(path: Path) -> Path:
    """Figure 1: empirical loss after one step along the negative sampled coarse gradient vs η, N = 10, 50, 1000."""
    v_star, w_star = make_teacher(M, N_DIM, SEED)
    gen = _gen(1)
    v = v_star + 0.5 * torch.randn(M, generator=gen, dtype=torch.float64)
    w = vector_at_angle(w_star, math.pi / 3, torch.randn(N_DIM, generator=gen, dtype=torch.float64), 0.7)
    fig, axes = plt.subplots(1, len(FIG1_SIZES), figsize=(12, 3.6), sharey=True)
    for ax, size in zip(axes, FIG1_SIZES, strict=True):
        z = sample_inputs(size, M, N_DIM, _gen(100 + size))  # fresh samples per panel
        dv, dw = empirical_coarse_grad("relu", v, w, v_star, w_star, z)
        steps = [(v - eta * dv, w - eta * dw) for eta in FIG1_ETAS]
        ax.plot(
            FIG1_ETAS, [empirical_loss(a, b, v_star, w_star, z) for a, b in steps], label="empirical loss"
        )
        pop = [population_loss(a, b, v_star, w_star) for a, b in steps]
        ax.plot(FIG1_ETAS, pop, "--", color="gray", lw=1, label="population f, same step")
        ax.set(title=f"sample size = {size}", xlabel="learning rate η")
    axes[0].set_ylabel("empirical loss")
    axes[0].legend()
    fig.suptitle(f"Figure 1 (ReLU STE; m={M}, n={N_DIM})")
    return _save(fig, path)


def figure_spurious(path: Path) -> Path:
    """Algorithm 1 (exact E g) started near the spurious minimizer: ReLU/clipped settle, identity is repelled."""
    v_star, w_star = make_teacher(M, N_DIM, SEED)
    gen = _gen(2)
    v_spur = spurious_minimizer(v_star)
    v0 = v_spur + NEAR_START * torch.randn(M, generator=gen, dtype=torch.float64)
    w0 = vector_at_angle(w_star, math.pi - NEAR_START, torch.randn(N_DIM, generator=gen, dtype=torch.float64))
    runs = {ste: coarse_gradient_descent(ste, v0, w0, v_star, w_star, *SPURIOUS_RUN) for ste in PAPER_STES}
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    _panels(axes, runs, ("loss", "theta", "w_norm"), ("loss f", "θ(w, w*)", "‖w‖"))
    axes[0].axhline(
        population_loss(v_spur, -w_star, v_star, w_star), color="k", ls=":", lw=1, label="f at minimizer"
    )
    axes[0].set_yscale("log")
    axes[0].legend()
    fig.suptitle(f"Algorithm 1 near the spurious minimizer θ = π, η = {SPURIOUS_RUN[0]} ({ADDITION})")
    return _save(fig, path)


def figure_global(path: Path) -> Path:
    """Algorithm 1 (exact E g) from a random start meeting Theorem 2's conditions: ReLU/clipped reach f = 0."""
    v_star, w_star = make_teacher(M, N_DIM, SEED)
    v0, w0 = theorem2_start(v_star, w_star, _gen(3))
    stes = ("relu", "clipped_relu")
    runs = {ste: coarse_gradient_descent(ste, v0, w0, v_star, w_star, *GLOBAL_RUN) for ste in stes}
    for run in runs.values():  # roundoff leaves f ~ ±1e-16 at the minimum: floor it for the log axis
        run.loss = run.loss.clamp_min(1e-16)
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    _panels(axes, runs, ("loss", "theta"), ("loss f", "θ(w, w*)"))
    axes[0].axhline(1e-6, color="k", ls=":", lw=1)  # the tests' convergence threshold
    axes[0].set_yscale("log")
    fig.suptitle(
        f"Algorithm 1 from a random start meeting Theorem 2's conditions, η = {GLOBAL_RUN[0]} ({ADDITION})"
    )
    return _save(fig, path)


def _panels(axes, runs: dict, fields: tuple[str, ...], labels: tuple[str, ...]) -> None:
    """One panel per trajectory field, one line per STE."""
    for ax, field, label in zip(axes, fields, labels, strict=True):
        for ste, run in runs.items():
            ax.plot(getattr(run, field).numpy(), label=ste, lw=1.2)
        ax.set(xlabel="iteration t", ylabel=label)
    axes[-1].legend()


def _save(fig, path: Path) -> Path:
    """Write a PNG and close the figure."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_figures(out_dir: str | Path = "outputs/theory") -> list[Path]:
    """Write the three figures (a) figure1.png, (b) cgd_spurious.png, (c) cgd_global.png under out_dir."""
    out = Path(out_dir)
    return [
        figure1(out / "figure1.png"),
        figure_spurious(out / "cgd_spurious.png"),
        figure_global(out / "cgd_global.png"),
    ]
