"""Closed-form moments of E[g_μ] for the paper's three STEs (Lemmas 11–12).

z ~ N(0, I_n), x = zᵀw; ŵ* = cos θ ŵ + sin θ u with u ⊥ ŵ (``landscape.Plane``). ``coarse.assemble_w`` turns
the moments into E[g_μ], which for these three are exactly eqs. (14), (11) and (26).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

SQRT_2PI = math.sqrt(2 * math.pi)


class Moments(NamedTuple):
    """E[z μ′(x)] = A ŵ, E[z μ′(x) σ(x)] = B ŵ, E[z μ′(x) σ(zᵀw*)] = C1 ŵ + C2 u (all in the plane of w, w*)."""

    A: float
    B: float
    C1: float
    C2: float


def xi(x: float) -> float:
    """ξ(x) = ∫_0^x r² e^{−r²/2} dr = √(π/2)·erf(x/√2) − x e^{−x²/2} (Lemma 7, integrated by parts)."""
    if math.isinf(x):
        return math.sqrt(math.pi / 2)
    return math.sqrt(math.pi / 2) * math.erf(x / math.sqrt(2)) - x * math.exp(-x * x / 2)


def p_q(theta: float, w_norm: float) -> tuple[float, float]:
    """Lemma 7's p(θ,w), q(θ,w) in closed form (derived here; tests check them against the paper's φ-integrals).

    Integrating out the coordinate t along u: p = E_s[s·1{0<s<1/‖w‖}·Φ(s cot θ)] and q = E_s[1{0<s<1/‖w‖}·φ(s cot θ)],
    s ~ N(0,1). φ(s)φ(s cot θ) = e^{−s²/(2 sin²θ)}/(2π) makes q a Gaussian integral, and p follows by parts.
    """
    k, sin, cos = w_norm, math.sin(theta), math.cos(theta)
    erf = math.erf(1 / (math.sqrt(2) * k * sin)) if sin > 0 else 1.0  # sin θ → 0: the window 1/(k sin θ) → ∞
    cot_k = cos / (k * sin) if sin > 0 else math.copysign(math.inf, cos)
    phi_k = math.exp(-1 / (2 * k * k)) / SQRT_2PI  # φ(1/‖w‖)
    tail = phi_k * (1 + math.erf(cot_k / math.sqrt(2))) / 2  # φ(1/‖w‖)·Φ(cot θ/‖w‖), from the parts
    return (1 + cos * erf) / (2 * SQRT_2PI) - tail, sin * erf / (2 * SQRT_2PI)


def identity_moments(w_norm: float, theta: float) -> Moments:
    """μ′ ≡ 1 (Lemma 11): a = 0, b = ŵ/√(2π), c = ŵ*/√(2π) — eq. (14)."""
    return Moments(0.0, 1 / SQRT_2PI, math.cos(theta) / SQRT_2PI, math.sin(theta) / SQRT_2PI)


def relu_moments(w_norm: float, theta: float) -> Moments:
    """μ′ = σ (Lemma 11): a = b = ŵ/√(2π), c = cos(θ/2)/√(2π)·(ŵ+ŵ*)/‖ŵ+ŵ*‖ = (ŵ+ŵ*)/(2√(2π)) — eq. (11)."""
    r = 1 / SQRT_2PI
    return Moments(r, r, (1 + math.cos(theta)) * r / 2, math.sin(theta) * r / 2)


def clipped_relu_moments(w_norm: float, theta: float) -> Moments:
    """μ′ = 1{0<x≤1} (Lemma 12; clip point c = α·L = 1): a = b = p(0,w)ŵ, c = p(θ,w)ŵ + q(θ,w)u — eq. (26),
    whose cot(θ/2) and csc(θ/2) terms cancel in this basis."""
    p0 = (1 - math.exp(-1 / (2 * w_norm**2))) / SQRT_2PI  # p(0, w), an identity of Yin et al. 2019, App. D
    p, q = p_q(theta, w_norm)
    return Moments(p0, p0, p, q)


CLOSED_FORMS: dict[str, Callable[[float, float], Moments]] = {
    "identity": identity_moments,
    "relu": relu_moments,
    "clipped_relu": clipped_relu_moments,
}
