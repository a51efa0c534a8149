"""Coarse gradients of the two-linear-layer model (Yin et al. 2019, §2.1, eq. 5): expected (exact) and sampled (autograd).

The expected w-part of every x-only STE is assembled from three moments of one Gaussian row z ~ N(0, I_n),
x = zᵀw (``Moments``). Expanding eq. (5) over the m i.i.d. rows, the pairs i ≠ j factor (E σ = ½) and

    E[g_μ] = (h(v,v*)·A/2 + ‖v‖²(B − A) − vᵀv*·C1) ŵ − vᵀv*·C2 u,      h as in eq. (11),

with a = E[z μ′(x)] = A ŵ, b = E[z μ′(x) σ(x)] = B ŵ and c = E[z μ′(x) σ(zᵀw*)] = C1 ŵ + C2 u (``Plane``).
Lemma 11's moments give eqs. (14) and (11) exactly, Lemma 12's give eq. (26); any other x-only STE gets its
moments by quadrature (``quadrature.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import numpy as np
import torch

from src.quant import STE, get_ste, quant_relu
from src.theory.landscape import Plane, Teacher, as_np, as_torch, grad_v_np, plane, teacher
from src.theory.moments import CLOSED_FORMS, Moments
from src.theory.quadrature import quadrature_moments

CHUNK = 2**15  # samples per autograd pass: bounds memory (CHUNK·m·n doubles) for any n_samples


def moments_fn(ste: STE, method: str = "auto") -> Callable[[float, float], Moments]:
    """(‖w‖, θ) ↦ Moments: the closed form ("closed"), quadrature ("quadrature") or closed when one exists ("auto")."""
    if not ste.x_only:
        raise ValueError(
            f"{ste.name}: μ′ depends on the backpropagated gradient (x_only=False), so E[g] does not reduce to "
            "the plane of w and w*; use sampled_coarse_grad (Monte Carlo) for it"
        )
    if method == "quadrature" or (method == "auto" and ste.name not in CLOSED_FORMS):
        return partial(quadrature_moments, ste)
    if method not in ("auto", "closed") or ste.name not in CLOSED_FORMS:
        raise ValueError(
            f"method must be auto, closed or quadrature (closed only for {sorted(CLOSED_FORMS)})"
        )
    return CLOSED_FORMS[ste.name]


def assemble_w(mo: Moments, v: np.ndarray, pl: Plane, t: Teacher) -> np.ndarray:
    """E[g_μ] from its moments (module docstring); h(v,v*) = ‖v‖² + (1ᵀv)² − (1ᵀv)(1ᵀv*) + vᵀv* (eq. 11)."""
    vv, vs, one_v = float(v @ v), float(v @ t.v), float(v.sum())
    h = vv + one_v**2 - one_v * t.one_v + vs
    return (h * mo.A / 2 + vv * (mo.B - mo.A) - vs * mo.C1) * pl.w_hat - vs * mo.C2 * pl.u


def expected_coarse_grad(ste, v, w, v_star, w_star, method: str = "auto", **ste_kwargs):
    """(E[∂ℓ/∂v], E[g_μ]): dv = ∂f/∂v (Lemma 4, eq. 10); dw by eq. (14)/(11)/(26) or quadrature (any x-only STE)."""
    moments = moments_fn(get_ste(ste, **ste_kwargs), method)
    t, v = teacher(v_star, w_star), as_np(v)
    pl = plane(as_np(w), t.w_hat)
    dw = assemble_w(moments(pl.w_norm, pl.theta), v, pl, t)
    return as_torch(grad_v_np(v, pl.theta, t)), as_torch(dw)


def sample_inputs(n_samples: int, m: int, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Z: (n_samples, m, n) float64 with i.i.d. N(0,1) entries."""
    return torch.randn(n_samples, m, n, generator=generator, dtype=torch.float64)


def _targets(z: torch.Tensor, v_star, w_star) -> torch.Tensor:
    """y*(Z) = v*ᵀσ(Zw*) per sample: (N,)."""
    return (z @ w_star.to(z) > 0).to(z.dtype) @ v_star.to(z)


def empirical_loss(v, w, v_star, w_star, z: torch.Tensor) -> float:
    """The sample mean of ℓ(v, w; Z) = ½(vᵀσ(Zw) − y*(Z))² (eq. 1) over the batch z: (N, m, n)."""
    y = (z @ w.to(z) > 0).to(z.dtype) @ v.to(z)
    return float(0.5 * ((y - _targets(z, v_star, w_star)) ** 2).mean())


def empirical_coarse_grad(ste, v, w, v_star, w_star, z: torch.Tensor, **ste_kwargs):
    """Batch means of ∂ℓ/∂v (eq. 3) and g_μ (eq. 5): autograd through the project's quant_relu (bits=1, α=1)."""
    v = v.detach().to(z).requires_grad_()
    w = w.detach().to(z).requires_grad_()
    y = quant_relu(z @ w, bits=1, alpha=1.0, ste=ste, **ste_kwargs) @ v  # σ(Zw) forward, μ′ backward
    loss = 0.5 * ((y - _targets(z, v_star, w_star)) ** 2).mean()
    dv, dw = torch.autograd.grad(loss, (v, w))
    return dv, dw


def sampled_coarse_grad(ste, v, w, v_star, w_star, n_samples: int, generator=None, **ste_kwargs):
    """Monte Carlo (E[∂ℓ/∂v], E[g_μ]) from n_samples fresh Z, in chunks of CHUNK; works for every registry STE."""
    ste = get_ste(ste, **ste_kwargs)
    dv, dw = torch.zeros(len(v), dtype=torch.float64), torch.zeros(len(w), dtype=torch.float64)
    for start in range(0, n_samples, CHUNK):
        size = min(CHUNK, n_samples - start)
        z = sample_inputs(size, len(v), len(w), generator)
        gv, gw = empirical_coarse_grad(ste, v, w, v_star, w_star, z)
        dv, dw = dv + gv * size, dw + gw * size  # chunk means weighted back to a sum
    return dv / n_samples, dw / n_samples
