"""Quantized weights: binary, ternary and uniform per-output-channel quantizers, their STEs, and the layers using them.

The paper quantizes activations only; this adds the weight side (conf/wquant). Every quantizer keeps float master
weights w (the optimizer updates them) and uses q(w) in the forward; the backward to w goes through a weight STE of
its own small registry (``WSTES``): ``identity`` (μ′ = 1) or ``clipped`` (μ′ = 1{|w| ≤ the largest level}, where
q(w) stops following w). Scales are per output channel (dim 0 of a Conv2d or Linear weight) and, unless learned
(LSQ), are functions of w treated as constants in the backward, as in DoReFa-Net.

The quantized layers subclass nn.Conv2d / nn.Linear and only change the weight used in forward, so state-dict keys
stay those of the float model: an FP checkpoint loads into a weight-quantized model and back. A learned step adds
one key, ``<layer>.weight_step``; when a state dict lacks it, it starts from the loaded weights (LSQ's init).

Over 300 lines on purpose: the weight side is one concept (quantizers, their STEs, the layers) with one registry each.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from src.quant.quantizer import MAX_BITS, lloyd_alpha
from src.registry import Registry

WSTES = Registry("wquant.ste")  # name -> WeightSTE class
WQUANTS = Registry("wquant")  # name -> WeightQuantizer class
SCALES = (
    "max",
    "lloyd",
    "lsq",
)  # uniform's step: max|w|/Qp, MSE-optimal for Gaussian weights, or learned (LSQ)
FIRST_LAST = ("float", "quantized")
STEP_FLOOR = 1e-8  # a learned step below this is used as this (w/s needs s > 0); its gradient is unchanged


# ---- backward: the weight STEs -----------------------------------------------------------------------------


class WeightSTE:
    """Gradient to the float weight w given the gradient at q(w); ``clip`` is the largest level per channel."""

    name = ""

    def backward(self, grad, w, clip):
        raise NotImplementedError

    def __repr__(self):
        return self.name


@WSTES.register
class IdentityW(WeightSTE):
    """μ(w) = w, μ′ = 1: the gradient at q(w) is w's (BinaryConnect, DoReFa-Net)."""

    name = "identity"

    def backward(self, grad, w, clip):
        return grad


@WSTES.register
class ClippedW(WeightSTE):
    """μ(w) = clamp(w, −c, c), μ′ = 1{|w| ≤ c} with c the largest level: no gradient where q(w) is saturated (BNN's
    1{|w| ≤ 1}; LSQ's 1{−Qp ≤ w/s ≤ Qp})."""

    name = "clipped"

    def backward(self, grad, w, clip):
        return grad * (w.abs() <= clip)


def get_wste(name: str) -> WeightSTE:
    """A weight STE by registry name."""
    return WSTES.lookup(name)()


# ---- forward: the quantizers -------------------------------------------------------------------------------


def per_channel(values: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """(C_out,) → (C_out, 1, …, 1): broadcastable against w."""
    return values.view(-1, *[1] * (w.dim() - 1))


def mean_abs(w: torch.Tensor) -> torch.Tensor:
    """mean |w| per output channel, shaped to broadcast against w."""
    return per_channel(w.abs().flatten(1).mean(1), w)


class _QuantWeightFn(torch.autograd.Function):
    """Forward q(w) (levels and scales from ``quantizer.levels``); backward to w through the quantizer's STE and,
    for a learned step, to the step by LSQ's rule."""

    @staticmethod
    def forward(ctx, w, step, quantizer):
        q, clip = quantizer.levels(w, step)
        ctx.quantizer = quantizer
        ctx.save_for_backward(w, step, clip)
        return q

    @staticmethod
    def backward(ctx, grad):
        w, step, clip = ctx.saved_tensors
        quantizer = ctx.quantizer
        grad_w = quantizer.ste.backward(grad, w, clip) if ctx.needs_input_grad[0] else None
        grad_step = None
        if step is not None and ctx.needs_input_grad[1]:
            grad_step = lsq_step_grad(grad, w, step.clamp_min(STEP_FLOOR), quantizer.qp)
        return grad_w, grad_step, None


class WeightQuantizer:
    """Base: validated settings of conf/wquant; ``levels(w, step)`` gives q(w) and the largest level c per channel.

    ``bits`` is the storage width of one weight, fixed by the quantizer except for uniform (k bits).
    """

    name = ""
    fixed_bits: int | None = None
    learns_step = False

    def __init__(self, bits=None, scale=None, ste: str = "identity", first_last: str = "float"):
        if bits != self.fixed_bits:
            width, want = (
                ("float", "null") if self.fixed_bits is None else (f"{self.fixed_bits}-bit", self.fixed_bits)
            )
            raise ValueError(f"wquant={self.name} has {width} weights: wquant.bits must be {want}, got {bits!r} "
                             "(k bits: wquant=uniform)")  # fmt: skip
        if scale is not None:
            raise ValueError(f"wquant.scale is uniform's step choice, not {self.name}'s: got {scale!r}")
        self.bits, self.scale = bits, scale
        self.ste = get_wste(ste)
        if first_last not in FIRST_LAST:
            raise ValueError(f"wquant.first_last must be one of {FIRST_LAST}, got {first_last!r}")
        self.first_last = first_last

    def levels(self, w, step):
        raise NotImplementedError

    def __call__(self, w: torch.Tensor, step: torch.Tensor | None = None) -> torch.Tensor:
        """q(w) with the STE backward to w (and LSQ's to a learned step)."""
        return _QuantWeightFn.apply(w, step, self)

    def __repr__(self):
        return (
            f"{self.name}(bits={self.bits}, scale={self.scale}, ste={self.ste}, first_last={self.first_last})"
        )


@WQUANTS.register
class FloatWeights(WeightQuantizer):
    """No weight quantization (the paper): the model is left as built."""

    name = "fp"

    def __call__(self, w, step=None):
        return w


@WQUANTS.register
class BinaryWeights(WeightQuantizer):
    """q(w) = a·sign(w), a = mean|w| per output channel (XNOR-Net eq. 6, DoReFa-Net's E|w|); sign(0) = +1."""

    name = "binary"
    fixed_bits = 1

    def levels(self, w, step):
        a = mean_abs(w)
        return torch.where(w >= 0, a, -a), a


@WQUANTS.register
class TernaryWeights(WeightQuantizer):
    """TWN (Li, Zhang, Liu 2016, eq. 9-10): Δ = 0.7·mean|w| per output channel, q(w) = a·sign(w)·1{|w| > Δ} with
    a = mean of |w| over |w| > Δ (0 when no weight passes Δ)."""

    name = "ternary"
    fixed_bits = 2  # three levels take two bits in storage (log₂3 ≈ 1.58 of information)
    threshold = 0.7  # Δ / mean|w|: TWN's approximation of the optimal threshold

    def levels(self, w, step):
        mask = w.abs() > self.threshold * mean_abs(w)
        count = per_channel(mask.flatten(1).sum(1).clamp_min(1), w)
        a = per_channel((w.abs() * mask).flatten(1).sum(1), w) / count
        return torch.sign(w) * mask * a, a


@WQUANTS.register
class UniformWeights(WeightQuantizer):
    """k-bit symmetric uniform: q(w) = s·clamp(round(w/s), −Qp, Qp), Qp = 2^(k−1) − 1 (levels −Qp..Qp, so 2 bits
    is {−s, 0, s}), a step s per output channel by ``scale``: max (max|w|/Qp: nothing clipped), lloyd (the step
    minimising E(w − q(w))² for Gaussian w of the channel's RMS) or lsq (learned, Esser et al. 2020).

    lloyd: |w| of a zero-mean Gaussian is half-normal and q rounds |w|/s to 0..Qp, which is the activations'
    quantizer with L = Qp levels, so s = RMS(w)·lloyd_alpha(bits − 1) (Yin et al. 2018a; src/quant/quantizer.py).
    """

    name = "uniform"

    def __init__(self, bits=4, scale="lloyd", ste="identity", first_last="float"):
        if isinstance(bits, bool) or not isinstance(bits, int) or not 2 <= bits <= MAX_BITS:
            raise ValueError(f"wquant.bits must be an integer in [2, {MAX_BITS}] for uniform, got {bits!r} "
                             "(1 bit: wquant=binary)")  # fmt: skip
        if scale not in SCALES:
            raise ValueError(f"wquant.scale must be one of {SCALES}, got {scale!r}")
        self.fixed_bits = bits  # this instance's width: the base checks nothing else about it
        super().__init__(bits, None, ste, first_last)
        self.scale, self.qp, self.learns_step = scale, 2 ** (bits - 1) - 1, scale == "lsq"

    def levels(self, w, step):
        s = step.clamp_min(STEP_FLOOR) if self.learns_step else self.fixed_step(w)
        return (w / s).round().clamp(-self.qp, self.qp) * s, self.qp * s

    def fixed_step(self, w):
        """The step per channel for scale max or lloyd (a function of w, constant in the backward)."""
        if self.scale == "max":
            s = w.abs().flatten(1).amax(1) / self.qp
        else:
            s = w.pow(2).flatten(1).mean(1).sqrt() * lloyd_alpha(self.bits - 1)
        return per_channel(s.clamp_min(torch.finfo(w.dtype).tiny), w)  # an all-zero channel: q = 0, not 0/0

    def init_step(self, w):
        """LSQ's initial step 2·mean|w|/√Qp per channel (Esser et al. 2020, §2.1)."""
        return 2 * mean_abs(w) / math.sqrt(self.qp)


def lsq_step_grad(grad, w, s, qp: int):
    """∂loss/∂s of LSQ (Esser et al. 2020, eq. 3) per channel: ∂q/∂s = round(w/s) − w/s inside |w/s| ≤ Qp, ±Qp
    outside, summed with the upstream gradient and scaled by g = 1/√(N·Qp), N the weights per output channel."""
    u = w / s
    dq = torch.where(u.abs() <= qp, u.round() - u, torch.sign(u) * qp)
    return (grad * dq).flatten(1).sum(1).view_as(s) / math.sqrt(w[0].numel() * qp)


def weight_quantizer(
    name: str = "fp", bits=None, scale=None, ste="identity", first_last="float"
) -> WeightQuantizer:
    """The quantizer conf/wquant describes (its ``_target_``); a bad setting is a one-line ValueError."""
    cls = WQUANTS.lookup(name)
    kwargs = {"scale": scale} if name == "uniform" or scale is not None else {}
    return cls(bits=bits, ste=ste, first_last=first_last, **kwargs)


def weight_token(name: str, bits) -> str | None:
    """The weight part of a run name (w<token>a<bits>): None for float, 1 binary, t ternary, k for uniform."""
    return {"fp": None, "binary": "1", "ternary": "t"}.get(name, str(bits))


# ---- layers ------------------------------------------------------------------------------------------------


class _WeightQuantized:
    """Mixin for Conv2d/Linear: forward with q(weight); the float weight stays the parameter (and state-dict key)."""

    def setup(self, quantizer: WeightQuantizer) -> None:
        self.wquant = quantizer
        if quantizer.learns_step:
            self.weight_step = nn.Parameter(quantizer.init_step(self.weight.detach()))

    def quantized_weight(self) -> torch.Tensor:
        return self.wquant(self.weight, getattr(self, "weight_step", None))

    def _load_from_state_dict(self, state_dict, prefix, *args):
        super()._load_from_state_dict(state_dict, prefix, *args)
        if self.wquant.learns_step and prefix + "weight_step" not in state_dict:  # e.g. an FP checkpoint
            with torch.no_grad():
                self.weight_step.copy_(self.wquant.init_step(self.weight))

    def extra_repr(self):
        return f"{super().extra_repr()}, wquant={self.wquant}"


class QuantConv2d(_WeightQuantized, nn.Conv2d):
    """nn.Conv2d whose forward uses the quantized weight."""

    @classmethod
    def wrap(cls, conv: nn.Conv2d, quantizer: WeightQuantizer) -> QuantConv2d:
        """The same layer (its own parameters) with quantized weights."""
        new = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
                  conv.groups, conv.bias is not None, conv.padding_mode, device="meta")  # fmt: skip
        new.weight, new.bias = conv.weight, conv.bias
        new.setup(quantizer)
        return new

    def forward(self, x):
        return self._conv_forward(x, self.quantized_weight(), self.bias)


class QuantLinear(_WeightQuantized, nn.Linear):
    """nn.Linear whose forward uses the quantized weight."""

    @classmethod
    def wrap(cls, linear: nn.Linear, quantizer: WeightQuantizer) -> QuantLinear:
        """The same layer (its own parameters) with quantized weights."""
        new = cls(linear.in_features, linear.out_features, linear.bias is not None, device="meta")
        new.weight, new.bias = linear.weight, linear.bias
        new.setup(quantizer)
        return new

    def forward(self, x):
        return F.linear(x, self.quantized_weight(), self.bias)


QUANTIZED = {nn.Conv2d: QuantConv2d, nn.Linear: QuantLinear}


def quantize_weights(model: nn.Module, quantizer: WeightQuantizer) -> nn.Module:
    """Swap the model's Conv2d/Linear layers for weight-quantized ones holding the same parameters, in place; the
    first and last (in forward order) stay float unless ``first_last`` is "quantized". fp leaves the model as is."""
    if quantizer.name == "fp":
        return model
    layers = [
        (name, m) for name, m in model.named_modules() if type(m) in QUANTIZED
    ]  # pre-order: forward order
    if quantizer.first_last == "float":
        layers = layers[1:-1]
    if not layers:
        raise ValueError(f"wquant={quantizer.name}: the model has no conv/linear layer to quantize "
                         "besides its first and last (wquant.first_last=quantized quantizes those)")  # fmt: skip
    for name, layer in layers:
        parent, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent), attr, QUANTIZED[type(layer)].wrap(layer, quantizer))
    return model
