"""The population landscape of the two-linear-layer model y = vᵀσ(Zw) (Yin et al. 2019, §2): Lemmas 1–2, Prop. 1.

The internals work on float64 numpy arrays: the vectors are tiny (m, n ~ 10), where torch's per-op overhead
(~2 µs against numpy's ~0.6 µs) would dominate Algorithm 1's inner loop. The public functions take and return
float64 torch tensors. ‖w*‖ is arbitrary: the loss is invariant to it, so only ŵ* is kept (``Teacher``).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch

SIN_EPS = 1e-12  # |sin θ| below this is roundoff of ŵ·ŵ*: θ is then taken as exactly 0 or π


def as_np(x) -> np.ndarray:
    """A float64 numpy copy of a tensor or array."""
    if torch.is_tensor(x):
        x = x.detach().cpu().numpy()
    return np.array(x, dtype=np.float64)


def as_torch(x) -> torch.Tensor:
    """A float64 torch tensor from a numpy array."""
    return torch.from_numpy(np.asarray(x, dtype=np.float64))


class Teacher(NamedTuple):
    """The teacher (v*, ŵ*) with the sums every formula needs."""

    v: np.ndarray  # v*
    w_hat: np.ndarray  # w*/‖w*‖
    one_v: float  # 1ᵀv*
    sq: float  # ‖v*‖²


def teacher(v_star, w_star) -> Teacher:
    """Normalise w* and precompute 1ᵀv*, ‖v*‖²."""
    v, w = as_np(v_star), as_np(w_star)
    return Teacher(v, w / math.sqrt(w @ w), float(v.sum()), float(v @ v))


class Plane(NamedTuple):
    """w in the plane spanned by w and w*: ŵ* = cos θ ŵ + sin θ u (Gaussian rows are rotation invariant)."""

    w_norm: float
    w_hat: np.ndarray
    u: np.ndarray  # P_w^⊥ŵ*/‖P_w^⊥ŵ*‖, the unit vector ⊥ ŵ towards w*; 0_n when θ ∈ {0, π}
    theta: float


def plane(w: np.ndarray, w_hat_star: np.ndarray) -> Plane:
    """ŵ, u and θ(w, w*) for w ≠ 0_n; atan2 keeps θ accurate near 0 and π, where arccos is not."""
    w_norm = math.sqrt(w @ w)
    if w_norm == 0.0:
        raise ValueError(
            "w = 0_n: θ(w, w*) and the gradients are undefined there (the theory assumes ‖w‖ ≥ c_w > 0)"
        )
    w_hat = w / w_norm
    cos = float(w_hat @ w_hat_star)
    perp = w_hat_star - cos * w_hat
    sin = math.sqrt(perp @ perp)
    if sin < SIN_EPS:
        return Plane(w_norm, w_hat, np.zeros_like(w), 0.0 if cos > 0 else math.pi)
    return Plane(w_norm, w_hat, perp / sin, math.atan2(sin, cos))


def loss_np(v: np.ndarray, theta: float, t: Teacher) -> float:
    """Lemma 1: f = ⅛[vᵀ(I+11ᵀ)v − 2vᵀ((1−2θ/π)I + 11ᵀ)v* + v*ᵀ(I+11ᵀ)v*], written with sums only."""
    one_v, k = float(v.sum()), 1 - 2 * theta / math.pi
    cross = k * float(v @ t.v) + one_v * t.one_v
    return (float(v @ v) + one_v**2 - 2 * cross + t.sq + t.one_v**2) / 8


def grad_v_np(v: np.ndarray, theta: float, t: Teacher) -> np.ndarray:
    """Eq. (6): ∂f/∂v = ¼(I+11ᵀ)v − ¼((1−2θ/π)I + 11ᵀ)v*."""
    k = 1 - 2 * theta / math.pi
    return (v + v.sum() - k * t.v - t.one_v) / 4


def grad_w_np(v: np.ndarray, pl: Plane, t: Teacher) -> np.ndarray:
    """Eq. (7): ∂f/∂w = −vᵀv*/(2π‖w‖) · u. At θ ∈ {0, π}, where f is not differentiable, u = 0_n gives 0_n:
    the minimal-norm Clarke subgradient (the limits of (7) there point in every direction ⊥ w)."""
    return -float(v @ t.v) / (2 * math.pi * pl.w_norm) * pl.u


def population_loss(v, w, v_star, w_star) -> float:
    """Lemma 1: the population loss f(v, w) = E_Z[ℓ(v, w; Z)] (eq. 2), including the case w = 0_n."""
    t, v, w = teacher(v_star, w_star), as_np(v), as_np(w)
    if not w.any():  # σ(Z0) = 0: the student predicts 0, f = ⅛ v*ᵀ(I+11ᵀ)v*
        return (t.sq + t.one_v**2) / 8
    return loss_np(v, plane(w, t.w_hat).theta, t)


def population_grad(v, w, v_star, w_star) -> tuple[torch.Tensor, torch.Tensor]:
    """Lemma 2: (∂f/∂v, ∂f/∂w), eqs. (6)–(7); ∂f/∂w = 0_n at θ ∈ {0, π} (see ``grad_w_np``)."""
    t, v = teacher(v_star, w_star), as_np(v)
    pl = plane(as_np(w), t.w_hat)
    return as_torch(grad_v_np(v, pl.theta, t)), as_torch(grad_w_np(v, pl, t))


def angle(w, w_star) -> float:
    """θ(w, w*) in [0, π]."""
    w_star = as_np(w_star)
    return plane(as_np(w), w_star / math.sqrt(w_star @ w_star)).theta


def vector_at_angle(w_star, theta: float, ref, norm: float = 1.0) -> torch.Tensor:
    """A w with θ(w, w*) = θ and ‖w‖ = norm, in the plane of w* and ref (ref not parallel to w*)."""
    ws, ref = as_np(w_star), as_np(ref)
    ws = ws / math.sqrt(ws @ ws)
    e = ref - (ref @ ws) * ws
    if math.sqrt(e @ e) <= SIN_EPS * math.sqrt(ref @ ref):
        raise ValueError("vector_at_angle: ref is parallel to w*, so it spans no plane with it")
    e = e / math.sqrt(e @ e)
    return as_torch(norm * (math.cos(theta) * ws + math.sin(theta) * e))


def prop1_condition(v_star) -> bool:
    """Proposition 1: saddle points and spurious local minimizers exist iff (1ᵀv*)² < ((m+1)/2)‖v*‖²."""
    v = as_np(v_star)
    return float(v.sum()) ** 2 < (len(v) + 1) / 2 * float(v @ v)


def stationary_v(v_star, theta: float) -> torch.Tensor:
    """The v where ∂f/∂v = 0 at angle θ (eq. 8): (I+11ᵀ)⁻¹((1−2θ/π)I + 11ᵀ)v*, with (I+11ᵀ)⁻¹ = I − 11ᵀ/(m+1)."""
    vs = as_np(v_star)
    x = (1 - 2 * theta / math.pi) * vs + vs.sum()
    return as_torch(x - x.sum() / (len(vs) + 1))


def spurious_minimizer(v_star) -> torch.Tensor:
    """The v of the spurious local minimizers (θ = π, any w = −c·w*): (I+11ᵀ)⁻¹(11ᵀ − I)v* (Prop. 1)."""
    if not prop1_condition(v_star):
        raise ValueError("Prop. 1's condition (1ᵀv*)² < ((m+1)/2)‖v*‖² fails: there is no spurious minimizer")
    return stationary_v(v_star, math.pi)


def saddle_point(v_star) -> tuple[torch.Tensor, float]:
    """Proposition 1, eq. (9): the saddle points' v and their angle θ(w, w*) (any w at that angle)."""
    if not prop1_condition(v_star):
        raise ValueError("Prop. 1's condition (1ᵀv*)² < ((m+1)/2)‖v*‖² fails: there are no saddle points")
    vs = as_np(v_star)
    big = (len(vs) + 1) * float(vs @ vs)
    theta = math.pi / 2 * big / (big - float(vs.sum()) ** 2)
    return stationary_v(vs, theta), theta


def theorem2_condition(v0, w0, v_star, w_star) -> bool:
    """Theorem 2's start: v0ᵀv* > 0, θ(w0, w*) < π/2 and (1ᵀv*)(1ᵀv0) ≤ (1ᵀv*)²."""
    v0, vs = as_np(v0), as_np(v_star)
    one_s = float(vs.sum())
    return float(v0 @ vs) > 0 and angle(w0, w_star) < math.pi / 2 and one_s * float(v0.sum()) <= one_s**2


def make_teacher(m: int = 10, n: int = 20, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded teacher v* ~ N(0, I_m), w* ~ N(0, I_n), redrawn until Prop. 1 holds and |1ᵀv*| ≥ 1 (so that the
    spurious minimizers exist and the identity STE's coarse gradient does not vanish there, Lemma 9)."""
    if m < 2:
        raise ValueError(f"m must be >= 2 for Prop. 1's condition to hold, got {m}")
    gen = torch.Generator().manual_seed(seed)
    while True:
        v = torch.randn(m, generator=gen, dtype=torch.float64)
        w = torch.randn(n, generator=gen, dtype=torch.float64)
        if prop1_condition(v) and abs(float(v.sum())) >= 1:
            return v, w


def theorem2_start(v_star, w_star, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A random (v0, w0) ~ N(0, I) that satisfies Theorem 2's conditions (rejection sampling, seeded)."""
    m, n = len(v_star), len(w_star)
    while True:
        v0 = torch.randn(m, generator=generator, dtype=torch.float64)
        w0 = torch.randn(n, generator=generator, dtype=torch.float64)
        if theorem2_condition(v0, w0, v_star, w_star):
            return v0, w0
