"""Algorithm 1: full-batch coarse gradient descent on the two-linear-layer model (Yin et al. 2019, §2–§3)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from src.quant import STE, get_ste
from src.theory.coarse import assemble_w, moments_fn, sampled_coarse_grad
from src.theory.landscape import (
    Plane,
    Teacher,
    as_np,
    as_torch,
    grad_v_np,
    grad_w_np,
    loss_np,
    plane,
    teacher,
)

StepGrad = Callable[[np.ndarray, np.ndarray, Plane], tuple[np.ndarray, np.ndarray]]


@dataclass
class Trajectory:
    """Algorithm 1's record: one entry per iterate t = 0..steps (the last included), float64 tensors."""

    loss: torch.Tensor  # f(v^t, w^t), Lemma 1
    grad_v_norm: torch.Tensor  # ‖∂f/∂v‖, eq. (6)
    inner: torch.Tensor  # ⟨g_w, ∂f/∂w⟩ (Lemmas 5, 7, 10), g_w the w-step's direction (E g, or its sample)
    cos: torch.Tensor  # cos(g_w, ∂f/∂w); 0 where either vanishes
    theta: torch.Tensor  # θ(w^t, w*)
    w_norm: torch.Tensor  # ‖w^t‖
    v: torch.Tensor  # the last iterate
    w: torch.Tensor


FIELDS = ("loss", "grad_v_norm", "inner", "cos", "theta", "w_norm")


def _exact_step(ste: STE, t: Teacher) -> StepGrad:
    """(E[∂ℓ/∂v], E[g_μ]) in closed form or by quadrature (any x-only STE)."""
    moments = moments_fn(ste)

    def step(v, w, pl):
        return grad_v_np(v, pl.theta, t), assemble_w(moments(pl.w_norm, pl.theta), v, pl, t)

    return step


def _sampled_step(ste: STE, v_star, w_star, n_samples: int, generator) -> StepGrad:
    """Monte Carlo (∂ℓ/∂v, g_μ) on n_samples fresh Z per step (any registry STE)."""

    def step(v, w, pl):
        dv, dw = sampled_coarse_grad(ste, as_torch(v), as_torch(w), v_star, w_star, n_samples, generator)
        return dv.numpy(), dw.numpy()

    return step


def _record(v: np.ndarray, pl: Plane, gw: np.ndarray, t: Teacher) -> tuple[float, ...]:
    """One row of the trajectory, in FIELDS order."""
    df_v, df_w = grad_v_np(v, pl.theta, t), grad_w_np(v, pl, t)
    gv_norm = math.sqrt(float(df_v @ df_v))
    inner = float(gw @ df_w)
    scale = math.sqrt(float(gw @ gw) * float(df_w @ df_w))
    return loss_np(v, pl.theta, t), gv_norm, inner, inner / scale if scale > 0 else 0.0, pl.theta, pl.w_norm


def coarse_gradient_descent(
    ste,
    v0,
    w0,
    v_star,
    w_star,
    lr: float,
    steps: int,
    n_samples: int | None = None,
    generator=None,
    **ste_kwargs,
) -> Trajectory:
    """Algorithm 1: v ← v − η E[∂ℓ/∂v], w ← w − η E[g_μ]; exact (n_samples=None) or sampled (an int)."""
    ste = get_ste(ste, **ste_kwargs)
    t = teacher(v_star, w_star)
    if n_samples is None:
        step = _exact_step(ste, t)
    else:
        step = _sampled_step(ste, as_torch(t.v), as_torch(t.w_hat), n_samples, generator)
    v, w = as_np(v0), as_np(w0)
    rows = np.empty((steps + 1, len(FIELDS)))
    for k in range(steps + 1):
        pl = plane(w, t.w_hat)  # raises if w^t = 0_n: the theory assumes ‖w^t‖ ≥ c_w > 0
        dv, gw = step(v, w, pl)
        rows[k] = _record(v, pl, gw, t)
        if k < steps:
            v, w = v - lr * dv, w - lr * gw
    cols = {name: as_torch(rows[:, i]) for i, name in enumerate(FIELDS)}
    return Trajectory(**cols, v=as_torch(v), w=as_torch(w))
