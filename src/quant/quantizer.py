"""The quantized ReLU σ_α with an STE backward (Yin et al. 2019, §4), its module, and the Lloyd resolution α."""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import nn

from src.quant.ste import STE, clip_point, get_ste, level_index, staircase

MAX_BITS = 16
ALPHA_MODES = ("fixed", "pact", "lsq")


def check_bits(bits) -> int:
    """Return bits if it is an integer in [1, MAX_BITS], else raise a ValueError naming it."""
    if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= MAX_BITS:
        raise ValueError(f"bits must be an integer in [1, {MAX_BITS}], got {bits!r}")
    return bits


def resolve_alpha(alpha, bits: int) -> float:
    """A positive resolution: a number, or "lloyd" for lloyd_alpha(bits)."""
    if alpha == "lloyd":
        return lloyd_alpha(bits)
    if isinstance(alpha, str) or isinstance(alpha, bool) or not alpha > 0:
        raise ValueError(f"alpha must be a number > 0 or 'lloyd', got {alpha!r}")
    return float(alpha)


def alpha_grad(grad, x, alpha, levels: int, mode: str) -> torch.Tensor:
    """∂loss/∂α for a learnable clip (alpha_mode pact) or step (lsq); alpha is a 0-dim tensor.

    PACT (Choi et al. 2018): the gradient of the clipped ReLU min(max(x,0), Lα) in α, ∂q/∂α = L·1{x>c}.
    LSQ (Esser et al. 2020) on the ceil staircase q = α·clamp(ceil(x/α), 0, L) with ceil passed straight
    through: ∂q/∂α = ceil(x/α) − x/α on 0 < x ≤ c, L above, 0 below; scaled by g = 1/√(N·L) with N the
    features per example (LSQ §2.2: N_F of the layer, not counting the batch).
    """
    above = x > clip_point(alpha, levels)
    if mode == "pact":
        return (grad * above).sum() * levels
    u = x / alpha
    dq = torch.where(above, float(levels), torch.where(x > 0, torch.ceil(u) - u, 0.0))
    features = x[0].numel() if x.dim() > 1 else x.numel()
    return (grad * dq).sum() / math.sqrt(features * levels)


def saved_kind(ste: STE, levels: int, alpha_mode: str) -> str:
    """What forward keeps for backward: the STE's need ("x", "level" or "nothing"), or x when α is learned (its
    gradient reads x) or when the level index k ≤ L+1 does not fit in a byte (more than 7 bits)."""
    if alpha_mode != "fixed" or (ste.needs == "level" and level_dtype(levels) is None):
        return "x"
    return ste.needs


def level_dtype(levels: int) -> torch.dtype | None:
    """The one-byte dtype holding k ∈ [0, L+1]; None if none does. int8 first: a CPU converts float to int8 with
    vector instructions and to uint8 one element at a time (about 3× slower)."""
    return torch.int8 if levels + 1 <= 127 else torch.uint8 if levels + 1 <= 255 else None


class _QuantReLUFn(torch.autograd.Function):
    """Forward σ_α(x); backward to x through the STE and, when α is learnable, to α by alpha_mode.

    The staircase is computed in float32 at least, also for a bfloat16/float16 input (autocast): its thresholds
    kα must not move with the input's precision. The output has the input's dtype. Outputs (σ_α(x), k): the
    level index k (one byte, or None) is what backward reads, returned so that setup_context can keep it
    (the form torch.func needs: vmap runs K stacked models through one call, src/stack.py).
    """

    generate_vmap_rule = True  # elementwise forward and backward: vmap may batch them as they are

    @staticmethod
    def forward(x, alpha, levels: int, ste: STE, alpha_mode: str):
        saved = saved_kind(ste, levels, alpha_mode)
        xf = x.to(torch.promote_types(x.dtype, torch.float32))
        if saved != "level":
            return staircase(xf, alpha, levels).to(x.dtype), None
        # k once, for the output and for backward
        k = level_index(xf, alpha, levels + 1 if ste.beyond_clip else levels)
        kept = k.to(level_dtype(levels))
        if ste.beyond_clip:
            k.clamp_max_(levels)  # the output's level min(k, L)
        return k.mul_(alpha).to(x.dtype), kept

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, alpha, ctx.levels, ctx.ste, ctx.alpha_mode = inputs
        ctx.saved = saved_kind(ctx.ste, ctx.levels, ctx.alpha_mode)
        if ctx.saved == "level":
            ctx.mark_non_differentiable(output[1])
            ctx.save_for_backward(output[1])
        elif ctx.saved == "x":
            ctx.save_for_backward(x.to(torch.promote_types(x.dtype, torch.float32)), alpha)

    @staticmethod
    def backward(ctx, grad, _):
        if ctx.saved != "x":  # fixed α: only x gets a gradient
            k = ctx.saved_tensors[0] if ctx.saved == "level" else None
            return ctx.ste.backward_level(grad, k, ctx.levels), None, None, None, None
        x, alpha = ctx.saved_tensors
        grad = grad.to(x.dtype)  # x is kept in float32 at least
        grad_x = ctx.ste.backward(grad, x, alpha, ctx.levels) if ctx.needs_input_grad[0] else None
        grad_alpha = None
        if ctx.needs_input_grad[1] and ctx.alpha_mode != "fixed":
            grad_alpha = alpha_grad(grad, x, alpha, ctx.levels, ctx.alpha_mode).reshape(alpha.shape)
        return grad_x, grad_alpha, None, None, None


def quant_relu(x, bits: int, alpha, ste: str | STE = "clipped_relu", alpha_mode: str = "fixed", **ste_kwargs):
    """σ_α(x) with 2^b levels; the gradient to x is grad·μ′(x) for the chosen STE (clip point c = (2^b−1)α).

    bits=1, alpha=1 is the binarized ReLU 1{x>0} of the two-layer model. ``alpha`` is a number, "lloyd" or a
    tensor (a learnable one gets its gradient by ``alpha_mode``: "pact" or "lsq").
    """
    check_bits(bits)
    if alpha_mode not in ALPHA_MODES:
        raise ValueError(f"alpha_mode must be one of {ALPHA_MODES}, got {alpha_mode!r}")
    if not torch.is_tensor(alpha):
        dtype = torch.promote_types(x.dtype, torch.float32)  # α in float32 at least, like the staircase
        alpha = torch.tensor(resolve_alpha(alpha, bits), dtype=dtype, device=x.device)
    return _QuantReLUFn.apply(x, alpha, 2**bits - 1, get_ste(ste, **ste_kwargs), alpha_mode)[0]


class QuantReLU(nn.Module):
    """The activation of every model: σ_α with an STE backward; ``bits=None`` is a float ReLU (full precision).

    alpha_mode "fixed" keeps α in a buffer (the paper); "pact" and "lsq" learn it as a parameter, kept > 0.
    """

    def __init__(
        self,
        bits: int | None = 2,
        alpha: float | str = 1.0,
        ste: str | STE = "clipped_relu",
        alpha_mode: str = "fixed",
        **ste_kwargs,
    ):
        super().__init__()
        self.bits, self.alpha_mode = bits, alpha_mode
        if bits is None:
            return
        check_bits(bits)
        if alpha_mode not in ALPHA_MODES:
            raise ValueError(f"alpha_mode must be one of {ALPHA_MODES}, got {alpha_mode!r}")
        self.ste = get_ste(ste, **ste_kwargs)
        alpha = torch.tensor(resolve_alpha(alpha, bits))
        self.alpha_floor = 1e-3 * float(alpha)  # a learnable α never goes below this (σ_α needs α > 0)
        if alpha_mode == "fixed":
            self.register_buffer("alpha", alpha)
        else:
            self.alpha = nn.Parameter(alpha)

    def forward(self, x):
        if self.bits is None:
            return F.relu(x)
        alpha = self.alpha
        if self.alpha_mode != "fixed":  # floor the value, pass the gradient straight through (no stuck α)
            alpha = alpha + (alpha.clamp_min(self.alpha_floor) - alpha).detach()
        return _QuantReLUFn.apply(x, alpha, 2**self.bits - 1, self.ste, self.alpha_mode)[0]

    def extra_repr(self):
        if self.bits is None:
            return "bits=None (float ReLU)"
        return f"bits={self.bits}, alpha={float(self.alpha.detach()):.4g}, ste={self.ste}, alpha_mode={self.alpha_mode}"


def _lloyd_step(alpha: float, k: torch.Tensor) -> float:
    """One Lloyd update α ← E[x·q]/E[q²] with q = clip(round(x/α), 0, L), x half-normal, in closed form.

    q = Σ_k 1{x ≥ t_k} with thresholds t_k = (k−½)α, so E[x·q] = Σ_k E[x·1{x ≥ t_k}] ∝ Σ_k φ(t_k) and
    E[q²] = Σ_k (2k−1)·P(x ≥ t_k) ∝ Σ_k (2k−1)·Φ(−t_k): sums of positive terms, no cancellation at many bits.
    """
    t = (k - 0.5) * alpha
    e_xq = torch.exp(-t * t / 2).sum() / math.sqrt(2 * math.pi)
    e_qq = ((2 * k - 1) * torch.special.ndtr(-t)).sum()
    return float(e_xq / e_qq)


@functools.cache
def lloyd_alpha(bits: int, tol: float = 1e-9, max_iter: int = 200) -> float:
    """Resolution α for unit-Gaussian pre-activations (BN without affine): the Lloyd-type iteration of Yin et al.
    2018a on the MSE of the round-to-nearest quantizer with levels 0, α, …, (2^b−1)α on half-normal data.

    Lloyd alone converges linearly with a rate near 1 at many bits, so each round takes Aitken's Δ² of two
    Lloyd steps (Steffensen); the fixed point is the same. tol is relative: α is used in float32, and the sums'
    rounding noise nears 1e-12 at 16 bits.
    """
    levels = 2 ** check_bits(bits) - 1
    k = torch.arange(1, levels + 1, dtype=torch.float64)
    alpha = 3.0 / levels  # spread the levels over 3σ
    for _ in range(max_iter):
        a1 = _lloyd_step(alpha, k)
        a2 = _lloyd_step(a1, k)
        curve = a2 - 2 * a1 + alpha
        new = a2 if curve == 0 else alpha - (a1 - alpha) ** 2 / curve
        if abs(new - alpha) <= tol * alpha:
            return new
        alpha = new if new > 0 else a2
    raise RuntimeError(f"lloyd_alpha({bits}) did not converge in {max_iter} rounds")
