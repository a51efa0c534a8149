"""A trained model read into a short list of deployable ops: the one description the ONNX graph and the integer
form are both written from.

Every model of src/models.py except the two-layer one is a sequence of: conv/linear → BN(affine=False) →
QuantReLU units, max-pools, a flatten, a global average pool, option-A residual blocks (conv-BN-act-conv-BN,
plus the subsampled, zero-padded input, then act) and a final linear layer. Each op names its input and output
values; a value is either the float input image or α·k with k the level index of a quantized activation.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from src.models import BasicBlock
from src.quant import QuantReLU
from src.quant.weights import STEP_FLOOR, QuantConv2d, QuantLinear

MAX_EXPORT_BITS = (
    8  # levels and integer weights travel as (u)int8: QuantizeLinear of opset 13 has no wider type
)


class ExportError(ValueError):
    """A model or run that cannot be exported, said in one line."""


@dataclass
class Weights:
    """A conv/linear weight: float32 ``values``, or integers ``q`` (int8, the quantizer's levels) times a
    per-output-channel ``scale`` s (float64; the layer's weight is exactly float32(s·q), as in forward)."""

    values: np.ndarray | None = None
    q: np.ndarray | None = None
    scale: np.ndarray | None = None
    quantizer: str = "fp"
    bits: int | None = None


@dataclass
class Op:
    """One deployable op. ``kind``: conv | linear (with optional BN, residual and act), maxpool, flatten, avgpool.

    ``act`` = (α, L): the output is α·clamp(⌈y/α⌉, 0, L) with y the BN output (plus the residual), else the
    op's float output (the logits). ``residual``: the value added before act, taken every ``stride``-th pixel
    with ``pad`` = (before, after) zero channels (option A).
    """

    kind: str
    src: str
    out: str
    weights: Weights | None = None
    bias: np.ndarray | None = None
    stride: int = 1
    padding: int = 0
    bn: tuple[np.ndarray, np.ndarray] | None = None  # (μ, σ = √(var + ε)) per channel, float64
    act: tuple[float, int] | None = None
    residual: str | None = None
    shortcut: dict = field(default_factory=dict)  # {"stride": s, "pad": [before, after]} for residual
    size: int = 0  # maxpool kernel (= stride)
    module: nn.Module | None = None  # the QuantReLU whose levels this op reproduces (for the parity check)

    def weights_shape(self) -> tuple[int, ...]:
        """(C_out, C_in[, k, k]) of a conv/linear op."""
        w = self.weights
        return tuple((w.values if w.q is None else w.q).shape)


def plan_model(model: nn.Module) -> list[Op]:
    """The ops of ``model`` in forward order; an ExportError names what cannot be exported."""
    mods = list(model.children()) if isinstance(model, nn.Sequential) else None
    if mods is None:
        raise ExportError(f"{type(model).__name__} is not a sequential model of src/models.py (two_layer?)")
    ops: list[Op] = []
    value, i = "input", 0
    while i < len(mods):
        m = mods[i]
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            op, i = _layer_unit(mods, i, value, f"v{len(ops)}")
        elif isinstance(m, BasicBlock):
            block = _block_ops(m, value, f"v{len(ops)}")
            ops += block[:-1]
            op, i = block[-1], i + 1
        elif isinstance(m, nn.MaxPool2d):
            op, i = _maxpool(m, value, f"v{len(ops)}"), i + 1
        elif isinstance(m, nn.Flatten) or (isinstance(m, nn.AdaptiveAvgPool2d) and _one(m.output_size)):
            kind = "flatten" if isinstance(m, nn.Flatten) else "avgpool"
            op, i = Op(kind, value, f"v{len(ops)}"), i + 1
        else:
            raise ExportError(f"cannot export layer {i} ({type(m).__name__})")
        ops.append(op)
        value = op.out
    if ops[-1].kind != "linear" or ops[-1].act is not None:
        raise ExportError("the model does not end with a linear layer (the logits)")
    ops[-1].out = "logits"
    return _name_activations(ops, model)


def _name_activations(ops: list[Op], model: nn.Module) -> list[Op]:
    """Each activation's output named by its QuantReLU's module path ("2", "3.act"): the diag/<layer> names."""
    paths = {id(m): name for name, m in model.named_modules()}
    rename = {op.out: paths[id(op.module)] for op in ops if op.module is not None}
    for op in ops:
        op.src, op.out = rename.get(op.src, op.src), rename.get(op.out, op.out)
        op.residual = rename.get(op.residual, op.residual)
    return ops


def _one(size) -> bool:
    return size == 1 or tuple(size) == (1, 1)


def _maxpool(m: nn.MaxPool2d, src: str, out: str) -> Op:
    k, s = m.kernel_size, m.stride
    if not (k == s and isinstance(k, int) and m.padding == 0 and m.dilation == 1 and not m.ceil_mode):
        raise ExportError(f"MaxPool2d({m}) is not a plain k×k pool with stride k")
    return Op("maxpool", src, out, size=k)


def _layer_unit(mods: list, i: int, src: str, out: str, bare_bn: bool = False) -> tuple[Op, int]:
    """mods[i] (conv/linear), with the BN and QuantReLU after it if present (``bare_bn``: a BN may end the
    unit, as in a residual body); returns (op, next index)."""
    layer = mods[i]
    op = Op("conv" if isinstance(layer, nn.Conv2d) else "linear", src, out, weights=read_weights(layer))
    op.bias = None if layer.bias is None else layer.bias.detach().double().numpy()
    if isinstance(layer, nn.Conv2d):
        op.stride, op.padding = _conv_geometry(layer)
    i += 1
    if i < len(mods) and isinstance(mods[i], nn.modules.batchnorm._BatchNorm):
        op.bn, i = read_bn(mods[i]), i + 1
        if i >= len(mods) and bare_bn:
            return op, i
        if i >= len(mods) or not isinstance(mods[i], QuantReLU):
            raise ExportError(f"BatchNorm at layer {i - 1} is not followed by a QuantReLU")
        op.act, op.module, i = read_act(mods[i]), mods[i], i + 1
    return op, i


def _block_ops(block: BasicBlock, src: str, out: str) -> list[Op]:
    """conv-BN-act, then conv-BN + shortcut → act: two ops, the second holding the residual."""
    body = list(block.body.children())
    first, j = _layer_unit(body, 0, src, f"{out}a")
    second, _ = _layer_unit(body, j, first.out, out, bare_bn=True)
    if first.act is None or second.bn is None or second.act is not None:
        raise ExportError("BasicBlock body is not conv-BN-act-conv-BN")
    second.act, second.module = read_act(block.act), block.act
    second.residual = src
    second.shortcut = {"stride": block.stride, "pad": [block.pad // 2, block.pad - block.pad // 2]}
    return [first, second]


def _conv_geometry(conv: nn.Conv2d) -> tuple[int, int]:
    k, s, p = conv.kernel_size, conv.stride, conv.padding
    if (conv.groups != 1 or conv.dilation != (1, 1) or k[0] != k[1] or s[0] != s[1] or isinstance(p, str)
            or p[0] != p[1] or conv.padding_mode != "zeros"):  # fmt: skip
        raise ExportError(f"conv {conv} is not a square, ungrouped, zero-padded convolution")
    return s[0], p[0]


def read_bn(bn: nn.modules.batchnorm._BatchNorm) -> tuple[np.ndarray, np.ndarray]:
    """(μ, σ) of an eval-mode BN without affine, σ = √(var + ε), both float64."""
    if bn.affine or bn.running_mean is None:
        raise ExportError("BatchNorm with affine parameters or without running statistics")
    mean = bn.running_mean.detach().double().numpy()
    sigma = np.sqrt(bn.running_var.detach().double().numpy() + bn.eps)
    return mean, sigma


def read_act(act: QuantReLU) -> tuple[float, int]:
    """(α, L) as forward uses them: a learned α floored at alpha_floor."""
    if not isinstance(act, QuantReLU) or act.bits is None:
        raise ExportError("a float ReLU (quant=fp): only quantized activations export as levels")
    if act.bits > MAX_EXPORT_BITS:
        raise ExportError(f"{act.bits}-bit activations: the export holds levels in 8 bits at most")
    alpha = float(act.alpha.detach())
    if act.alpha_mode != "fixed":
        alpha = max(alpha, act.alpha_floor)
    return float(np.float32(alpha)), 2**act.bits - 1


def read_weights(layer: nn.Module) -> Weights:
    """Float values, or the quantizer's integer levels q and per-channel scale s with s·q == forward's weight."""
    w = layer.weight.detach()
    if not isinstance(layer, (QuantConv2d, QuantLinear)):
        return Weights(values=w.float().numpy())
    quantizer = layer.wquant
    if quantizer.bits > MAX_EXPORT_BITS:
        raise ExportError(f"{quantizer.bits}-bit weights: the export holds integer weights in 8 bits at most")
    with torch.no_grad():
        wq = layer.quantized_weight().float()
        scale, qmax = _weight_scale(layer, w)  # (C_out,) float32: s per output channel
        safe = torch.where(scale > 0, scale, 1.0).view(-1, *[1] * (w.dim() - 1))
        q = torch.round(wq / safe).clamp(-qmax, qmax)
    if not torch.equal(q * safe, wq):  # forward's float32 product s·q, reproduced exactly, or no export
        raise ExportError(f"{quantizer.name} weights of {layer} are not scale × integer levels")
    return Weights(
        q=q.to(torch.int8).numpy(),
        scale=scale.double().numpy(),
        quantizer=quantizer.name,
        bits=quantizer.bits,
    )


def _weight_scale(layer: nn.Module, w: torch.Tensor) -> tuple[torch.Tensor, int]:
    """The per-channel scale s forward multiplies the integer levels by, and the largest |level|."""
    quantizer = layer.wquant
    if quantizer.name == "uniform":
        step = layer.weight_step.clamp_min(STEP_FLOOR) if quantizer.learns_step else quantizer.fixed_step(w)
        return step.flatten().float(), quantizer.qp
    _, a = quantizer.levels(w, None)  # binary, ternary: levels ±a (and 0), a per channel
    return a.flatten().float(), 1
