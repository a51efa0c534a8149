"""One STE per slice of a stack: the paper's three STEs as data, so K runs with different STEs share one model.

identity, relu and clipped_relu (src/quant/ste.py) are all "pass the gradient where the level index k lies in an
interval": μ′ = 1{lo ≤ k ≤ hi} with k = clamp(ceil(x/α), 0, L+1) the forward's own level index (k = L+1 ⇔ x > c):

    identity      lo = 0, hi = L+1   (everywhere)
    relu          lo = 1, hi = L+1   (x > 0)
    clipped_relu  lo = 1, hi = L     (0 < x ≤ c)

so (lo, hi) become two per-slice buffers and one vmapped function serves all three. The other STEs have smooth μ′
(functions of x, α and hyper-parameters of their own), which would need one code path per STE inside the stacked
call; they are not stacked (src/stacked/plan.py says why a job is not).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from src.quant import QuantReLU
from src.quant.quantizer import level_dtype
from src.quant.ste import level_index

BOUNDS = {"identity": (0, 1), "relu": (1, 1), "clipped_relu": (1, 0)}  # (lo, hi − L): hi is L+1 or L


def bounds(ste: str, levels: int) -> tuple[float, float]:
    """(lo, hi) of the level-index interval where ``ste`` passes the gradient, for L = ``levels``."""
    lo, above = BOUNDS[ste]
    return float(lo), float(levels + above)


class _IntervalSTEFn(torch.autograd.Function):
    """σ_α(x) forward (the quantizer's arithmetic: k in float32 at least, then k·α); backward grad·1{lo ≤ k ≤ hi}."""

    generate_vmap_rule = True  # elementwise: vmap batches it as it is

    @staticmethod
    def forward(x, alpha, lo, hi, levels: int):
        xf = x.to(torch.promote_types(x.dtype, torch.float32))
        k = level_index(xf, alpha, levels + 1)
        kept = k.to(level_dtype(levels) or k.dtype)  # one byte per element up to 7 bits
        return k.clamp_max(levels).mul_(alpha).to(x.dtype), kept  # the output's level min(k, L)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.mark_non_differentiable(output[1])
        ctx.save_for_backward(output[1], inputs[2], inputs[3])

    @staticmethod
    def backward(ctx, grad, _):
        k, lo, hi = ctx.saved_tensors
        return torch.where((k >= lo) & (k <= hi), grad, 0.0), None, None, None, None


class SliceQuantReLU(nn.Module):
    """QuantReLU with a fixed α whose STE is read from the buffers ``ste_lo``/``ste_hi`` (one value per slice)."""

    def __init__(self, bits: int):
        super().__init__()
        self.levels = 2**bits - 1
        for name in ("alpha", "ste_lo", "ste_hi"):
            self.register_buffer(name, torch.zeros(()), persistent=name == "alpha")

    def forward(self, x):
        return _IntervalSTEFn.apply(x, self.alpha, self.ste_lo, self.ste_hi, self.levels)[0]


def quantizers(model: nn.Module) -> list[tuple[str, QuantReLU]]:
    """The model's quantized activations (float ReLUs, bits=None, stay as they are)."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, QuantReLU) and m.bits is not None]


def add_bounds(model: nn.Module, ste: str) -> None:
    """Give each quantized activation of a run's model its STE's (lo, hi) as non-persistent buffers: stacked with
    the weights, left out of the run's state_dict (its checkpoint stays the ordinary one)."""
    for _, m in quantizers(model):
        lo, hi = bounds(ste, 2**m.bits - 1)
        m.register_buffer("ste_lo", torch.tensor(lo), persistent=False)
        m.register_buffer("ste_hi", torch.tensor(hi), persistent=False)


def stack_base(model: nn.Module, per_slice_ste: bool) -> nn.Module:
    """A copy of ``model`` to run each slice of the stack: quantized activations that read their STE per slice
    (``per_slice_ste``), and without the channels_last input hook of src/models.py (vmap cannot ask a tensor's
    memory format; the layout changes speed, never values)."""
    base = copy.deepcopy(model)
    base._forward_pre_hooks.clear()
    for name, m in quantizers(base) if per_slice_ste else ():
        owner, _, leaf = name.rpartition(".")
        setattr(base.get_submodule(owner), leaf, SliceQuantReLU(m.bits))
    return base
