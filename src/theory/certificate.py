"""A descent certificate for any STE on the two-linear-layer model (Yin et al. 2019, §3, eqs. 12–13, Lemmas 5–10).

At random points (v, w) the expected coarse gradient E g = (E[∂ℓ/∂v], E[g_μ]) is compared with ∇f = (∂f/∂v,
∂f/∂w): ⟨E g, ∇f⟩ > 0 makes −E g a descent direction. For any x-only STE with μ′ ≥ 0 this holds wherever ∇f ≠ 0:
the v-parts agree (Lemma 4) and ⟨E g_w, ∂f/∂w⟩ = (vᵀv*)² C2 / (2π‖w‖) with C2 ≥ 0. What separates the STEs is
the paper's instability criterion: whether E g vanishes at the spurious minimizer (θ = π), and the ratio
‖E g_w‖²/(‖∂f/∂v‖² + ⟨E g_w, ∂f/∂w⟩) near it, which eq. (12) bounds for the ReLU STEs and which blows up for
the identity STE (eq. 16).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from src.quant import STES, get_ste
from src.theory.coarse import assemble_w, moments_fn, sampled_coarse_grad
from src.theory.landscape import (
    as_np,
    grad_v_np,
    grad_w_np,
    make_teacher,
    plane,
    spurious_minimizer,
    teacher,
    vector_at_angle,
)

VANISH_TOL = 1e-10  # ‖E g_w‖ at the spurious minimizer below this counts as 0 (float64 roundoff is ~1e-16)
NEARS = (0.1, 0.01)  # distances δ to the spurious minimizer: v = it + δ·N(0, I), θ ∈ (π − δ, π)
MC_SAMPLES, MC_BATCHES = (
    2**22,
    16,
)  # Monte Carlo for STEs that are not x-only (ewgs): N and batches for the SE


def sample_points(v_star, w_star, n_points: int, gen: torch.Generator, near: float | None = None):
    """Random (v, w): v = center + spread·N(0, I_m), θ(w, w*) uniform, ‖w‖ log-uniform in [½, 2].

    Around the teacher (near=None): center v*, spread 1, θ ∈ (0, π); near the spurious minimizer: its v,
    spread δ = near, θ ∈ (π − δ, π).
    """
    m, n = len(v_star), len(w_star)
    center, spread = (v_star, 1.0) if near is None else (spurious_minimizer(v_star), near)
    u = torch.rand(n_points, 2, generator=gen, dtype=torch.float64)
    theta = math.pi * u[:, 0] if near is None else math.pi - near * u[:, 0]
    norms = 2.0 ** (2 * u[:, 1] - 1)
    for k in range(n_points):
        v = center + spread * torch.randn(m, generator=gen, dtype=torch.float64)
        ref = torch.randn(n, generator=gen, dtype=torch.float64)
        yield v, vector_at_angle(w_star, float(theta[k]), ref, float(norms[k]))


def _compare(ste, v_star, w_star, points) -> np.ndarray:
    """Per point: ⟨E g, ∇f⟩, cos(E g, ∇f) and eq. (12)'s ratio ‖E g_w‖²/(‖∂f/∂v‖² + ⟨E g_w, ∂f/∂w⟩), exact."""
    moments, t = moments_fn(ste), teacher(v_star, w_star)
    rows = []
    for v, w in points:
        v = as_np(v)
        pl = plane(as_np(w), t.w_hat)
        df = np.concatenate([grad_v_np(v, pl.theta, t), grad_w_np(v, pl, t)])
        gw = assemble_w(moments(pl.w_norm, pl.theta), v, pl, t)
        eg = np.concatenate([df[: len(v)], gw])  # the v-parts agree (Lemma 4)
        inner = float(eg @ df)  # = ‖∂f/∂v‖² + ⟨E g_w, ∂f/∂w⟩
        rows.append((inner, inner / math.sqrt(float(eg @ eg) * float(df @ df)), float(gw @ gw) / inner))
    return np.array(rows)


def spurious_grad(ste, v_star, w_star, seed: int = 0) -> tuple[float, float]:
    """⟨E g_w, ŵ⟩ at the spurious minimizer (w = −w*; E g_w is along ŵ there) and its standard error: exact
    (SE 0) for x-only STEs, Monte Carlo over MC_SAMPLES in MC_BATCHES batches otherwise."""
    v = spurious_minimizer(v_star)
    if ste.x_only:
        t = teacher(v_star, w_star)
        pl = plane(-t.w_hat, t.w_hat)
        return float(assemble_w(moments_fn(ste)(pl.w_norm, pl.theta), as_np(v), pl, t) @ pl.w_hat), 0.0
    # w = −w*: σ(Zw), σ(Zw*) and ⟨g_w, ŵ⟩ depend on Z only through Zŵ, so n = 1 gives the same estimator
    # at 1/n of the cost (rotation invariance)
    w, gen, batch = (
        torch.ones(1, dtype=torch.float64),
        torch.Generator().manual_seed(seed),
        MC_SAMPLES // MC_BATCHES,
    )
    est = [float(sampled_coarse_grad(ste, v, w, v_star, -w, batch, gen)[1][0]) for _ in range(MC_BATCHES)]
    return float(np.mean(est)), float(np.std(est, ddof=1) / math.sqrt(MC_BATCHES))


def descent_certificate(ste, v_star, w_star, n_points: int = 256, seed: int = 0, **ste_kwargs) -> dict:
    """The certificate of one STE (module docstring): descent fraction and cosines (x-only STEs), E g at θ = π."""
    ste = get_ste(ste, **ste_kwargs)
    along, se = spurious_grad(ste, v_star, w_star, seed)
    out = {
        "ste": ste.name,
        "spurious_grad": along,
        "spurious_se": se,
        "method": "exact" if ste.x_only else "MC",
    }
    out["vanishes"] = abs(along) <= VANISH_TOL if ste.x_only else abs(along) <= 3 * se
    if not ste.x_only:  # no exact E g away from θ = π; a Monte Carlo sign test would only measure noise
        return (
            out
            | {"descent_fraction": math.nan, "min_cos": math.nan}
            | {f"ratio@{d}": math.nan for d in NEARS}
        )
    gen = torch.Generator().manual_seed(seed)
    around = _compare(ste, v_star, w_star, sample_points(v_star, w_star, n_points, gen))
    out |= {"descent_fraction": float((around[:, 0] > 0).mean()), "min_cos": float(around[:, 1].min())}
    for d in NEARS:  # the largest eq. (12) ratio at distance ~δ: bounded (ReLU-like) or growing like δ⁻²
        out[f"ratio@{d}"] = float(
            _compare(ste, v_star, w_star, sample_points(v_star, w_star, n_points, gen, d))[:, 2].max()
        )
    return out


def certificate_table(m: int = 10, n: int = 20, seed: int = 0, n_points: int = 256) -> str:
    """The certificate of every registry STE (default hyper-parameters) as a markdown table."""
    v_star, w_star = make_teacher(m, n, seed)
    ratios = " | ".join(f"max eq. (12) ratio, δ={d}" for d in NEARS)
    head = (
        f"Teacher: make_teacher(m={m}, n={n}, seed={seed}); {n_points} random points around it, and {n_points} at "
        f"each distance δ from the spurious minimizer.\n\n"
        f"| STE | E g | descent fraction | min cos(E g, ∇f) | {ratios} | ⟨E g_w, ŵ⟩ at spurious | vanishes |\n"
        f"|{'---|' * (6 + len(NEARS))}"
    )
    rows = [head]
    for name in STES:
        c = descent_certificate(name, v_star, w_star, n_points, seed)
        grad = f"{c['spurious_grad']:.3e}" + (f" ± {c['spurious_se']:.1e}" if c["method"] == "MC" else "")
        cells = [
            f"{c['descent_fraction']:.3f}",
            f"{c['min_cos']:.4f}",
            *(f"{c[f'ratio@{d}']:.4g}" for d in NEARS),
        ]
        cells = [cell if cell != "nan" else "—" for cell in cells]
        method = "exact" if c["method"] == "exact" else f"MC, N={MC_SAMPLES}"
        rows.append(
            f"| {name} | {method} | {' | '.join(cells)} | {grad} | {'yes' if c['vanishes'] else 'no'} |"
        )
    return "\n".join(rows)
