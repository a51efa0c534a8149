"""The moments of E[g_μ] for any x-only STE, by quadrature over the plane spanned by w and w*.

Rotation invariance: only the coordinates of z along ŵ and u matter, and in polar form (s, t) = r(cos φ, sin φ)
with x = zᵀw = ‖w‖ r cos φ, σ(x) = 1{|φ| < π/2} and σ(zᵀw*) = 1{|φ − θ| < π/2}. Each moment is then

    (1/2π) ∫_{sector} (cos φ or sin φ) · R(‖w‖ cos φ) dφ,    R(κ) := ∫_0^∞ r² e^{−r²/2} μ′(κr) dr,

(for the clipped ReLU, R(κ) = ξ(1/κ), which is how Lemma 7's p and q arise). Both integrals use Gauss–Legendre
on pieces where the integrand is smooth: φ is cut where cos φ changes sign (R may jump there), at the
sector's ends and where ‖w‖cos φ = kα; r is cut where κr crosses a multiple kα of the resolution (k = 0..L), where the staircase-based
STEs put their kinks and jumps. A μ′ with kinks elsewhere still converges, only algebraically.
"""

from __future__ import annotations

import math
from functools import cache

import numpy as np
import torch

from src.quant import STE
from src.theory.moments import Moments

ALPHA, LEVELS = 1.0, 1  # bits = 1, α = 1: σ is 1{x>0} and the clip point is c = 1 (the paper's model)
R_MAX = 12.0  # ∫_{R_MAX}^∞ r² e^{−r²/2} dr < 1e-29: the radial integral is cut there
DMU_ELEMENTS = 16384  # μ′ evaluated on slices of at most this many points (see ``radial``)
N_PHI, N_R = 64, 48  # Gauss–Legendre nodes per smooth piece: ≤ 1e-11 against the closed forms for ‖w‖ ≤ 50


@cache
def _legendre(k: int) -> tuple[np.ndarray, np.ndarray]:
    """Gauss–Legendre nodes and weights on [0, 1]."""
    x, w = np.polynomial.legendre.leggauss(k)
    return (x + 1) / 2, w / 2


def _nodes(lo: np.ndarray, hi: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Nodes and weights on each interval [lo, hi] (broadcast): shape lo.shape + (k,)."""
    x, w = _legendre(k)
    width = (hi - lo)[..., None]
    return lo[..., None] + width * x, width * w


def radial(ste: STE, kappa: np.ndarray) -> np.ndarray:
    """R(κ) = ∫_0^∞ r² e^{−r²/2} μ′(κr) dr for each κ (any sign), cut where κr = kα."""
    knots = ALPHA * np.arange(1, LEVELS + 1)  # kα > 0; k = 0 is r = 0, the lower end
    with np.errstate(divide="ignore"):
        cuts = np.where(kappa[:, None] > 0, knots / kappa[:, None], R_MAX)  # κ ≤ 0: κr never reaches kα > 0
    edges = np.concatenate(
        [np.zeros((len(kappa), 1)), np.minimum(cuts, R_MAX), np.full((len(kappa), 1), R_MAX)], 1
    )
    r, wr = _nodes(edges[:, :-1], edges[:, 1:], N_R)  # (P, L+1, N_R)
    x = torch.from_numpy(kappa[:, None, None] * r)
    alpha = torch.tensor(ALPHA, dtype=torch.float64)
    # μ′ in slices below torch's parallel grain (32768 elements): single-threaded ops are faster at this size,
    # and on a shared CPU idle-spinning OpenMP threads made the whole call ~10x slower
    rows = max(DMU_ELEMENTS // (x.shape[1] * x.shape[2]), 1)
    dmu = torch.cat([ste.dmu(part, alpha, LEVELS) for part in x.split(rows)]).numpy()
    return (wr * r * r * np.exp(-r * r / 2) * dmu).sum((1, 2))


def _pieces(
    ranges: list[tuple[float, float]], cuts: list[float]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Split each φ-range at the cuts inside it: (lo, hi, index of the range) per piece."""
    lo, hi, tag = [], [], []
    for i, (a, b) in enumerate(ranges):
        points = [a, *sorted(c for c in cuts if a < c < b), b]
        lo += points[:-1]
        hi += points[1:]
        tag += [i] * (len(points) - 1)
    return np.array(lo), np.array(hi), np.array(tag)


def quadrature_moments(ste: STE, w_norm: float, theta: float) -> Moments:
    """A, B, C1, C2 (``moments.Moments``) of an x-only STE at (‖w‖, θ) by the polar quadrature above."""
    half = math.pi / 2
    # the half-planes cos φ > 0 (x > 0) and < 0, and the sector |φ − θ| < π/2 (zᵀw* > 0) cut at φ = π/2
    ranges = [(-half, half), (half, 3 * half), (theta - half, half), (half, theta + half)]
    # also cut where the knot kα sits at r = 1 (‖w‖cos φ = kα): R(‖w‖cos φ) changes on that scale, which
    # shrinks towards ±π/2 as ‖w‖ grows
    knots = ALPHA * np.arange(1, LEVELS + 1)
    angles = np.arccos(knots[knots < w_norm] / w_norm)
    lo, hi, tag = _pieces(ranges, [*angles, *(-angles)])
    phi, wphi = _nodes(lo, hi, N_PHI)  # (pieces, N_PHI)
    rad = radial(ste, w_norm * np.cos(phi).ravel()).reshape(phi.shape) * wphi / (2 * math.pi)
    cos_int = np.bincount(tag, (rad * np.cos(phi)).sum(1), 4)  # per range
    sin_int = np.bincount(tag, (rad * np.sin(phi)).sum(1), 4)
    return Moments(
        A=float(cos_int[0] + cos_int[1]),  # the whole plane
        B=float(cos_int[0]),  # x > 0
        C1=float(cos_int[2] + cos_int[3]),  # zᵀw* > 0
        C2=float(sin_int[2] + sin_int[3]),
    )
