"""The ONNX graph of a planned model (opset 13), written node by node with onnx.helper.

Why not torch.onnx: the activation is a custom autograd Function (its forward reaches the exporter only as an
opaque op or a trace of ceil/clamp with no Q/DQ), and each exporter version lays out BN and the weight
quantizer differently. Writing the graph from the plan gives the same small, readable graph every time:

    weights:    int8 levels q ──DequantizeLinear(per-channel scale s/σ, axis 0)──► Conv/Gemm (BN folded:
                bias (b − μ)/σ); float weights are float initialisers W/σ
    activation: y ─Div(α)─Ceil─QuantizeLinear(scale 1, uint8)─Clip(0, L)─► level k ─DequantizeLinear(α)─► α·k

The ceil staircase is exact: Ceil makes ⌈y/α⌉ an integer-valued float, so QuantizeLinear's round-half-to-even
never meets a half (a quotient of 1 is exact), and its uint8 saturation plus the Clip give clamp(·, 0, L). A y
exactly on a threshold (y/α an integer j) gives level j, as PyTorch's ceil does. What can differ from PyTorch is
the float rounding of y itself (BN folded into the weights, another summation order): a y within a rounding
error of a threshold may land on the other level; the parity check counts these per layer.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from src.deploy.plan import Op

OPSET = 13  # per-axis DequantizeLinear needs 13
IR_VERSION = 8  # the IR of opset 13's onnx release: readable by older onnxruntime builds too


class _Graph:
    def __init__(self):
        self.nodes, self.inits = [], []

    def init(self, name: str, array: np.ndarray) -> str:
        self.inits.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def node(self, op: str, inputs: list[str], output: str, **attrs) -> str:
        self.nodes.append(helper.make_node(op, inputs, [output], name=output, **attrs))
        return output


def build_onnx(ops: list[Op], in_shape: tuple[int, ...], num_classes: int, doc: str = "") -> onnx.ModelProto:
    """The model: input ``input`` float32 (N, *in_shape), output ``logits`` float32 (N, num_classes)."""
    g = _Graph()
    for op in ops:
        if op.kind in ("conv", "linear"):
            _layer(g, op)
        elif op.kind == "maxpool":
            g.node("MaxPool", [op.src], op.out, kernel_shape=[op.size] * 2, strides=[op.size] * 2)
        elif op.kind == "avgpool":
            g.node("GlobalAveragePool", [op.src], op.out)
        else:
            g.node("Flatten", [op.src], op.out, axis=1)
    graph = helper.make_graph(
        g.nodes, "ste_lab", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", *in_shape])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", num_classes])], g.inits,
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="ste-lab")
    model.ir_version, model.doc_string = IR_VERSION, doc
    return model


def _layer(g: _Graph, op: Op) -> None:
    """Conv/Gemm with BN folded, the residual added, then the activation's Q-Clip-DQ."""
    w, out = op.weights, op.out
    mu, sigma = op.bn if op.bn is not None else (0.0, 1.0)
    channels = op.weights_shape()[0]
    bias = (np.zeros(channels) if op.bias is None else op.bias) - mu
    g.init(f"{out}.bias", (bias / sigma * np.ones(channels)).astype(np.float32))
    per_channel = (np.ones(channels) / sigma).reshape(-1, *[1] * (len(op.weights_shape()) - 1))
    if w.q is None:
        weight = g.init(f"{out}.weight", (w.values * per_channel).astype(np.float32))
    else:
        scale = (w.scale / sigma * np.ones(channels)).astype(np.float32)
        inputs = [g.init(f"{out}.weight_q", w.q), g.init(f"{out}.weight_scale", scale),
                  g.init(f"{out}.weight_zero", np.zeros(channels, np.int8))]  # fmt: skip
        weight = g.node("DequantizeLinear", inputs, f"{out}.weight", axis=0)
    y = f"{out}.pre" if op.act is not None else out
    if op.kind == "conv":
        k = op.weights_shape()[-1]
        g.node("Conv", [op.src, weight, f"{out}.bias"], y, kernel_shape=[k, k],
               strides=[op.stride] * 2, pads=[op.padding] * 4)  # fmt: skip
    else:
        g.node("Gemm", [op.src, weight, f"{out}.bias"], y, transB=1)
    if op.residual is not None:
        y = g.node("Add", [y, _shortcut(g, op)], f"{out}.sum")
    if op.act is not None:
        _activation(g, y, op.act, out)


def _shortcut(g: _Graph, op: Op) -> str:
    """Option A: every stride-th pixel of the block input, zero channels before and after."""
    s, (before, after) = op.shortcut["stride"], op.shortcut["pad"]
    big = np.iinfo(np.int64).max
    starts, ends = (
        g.init(f"{op.out}.sc_starts", np.array([0, 0])),
        g.init(f"{op.out}.sc_ends", np.array([big, big])),
    )
    axes, steps = (
        g.init(f"{op.out}.sc_axes", np.array([2, 3])),
        g.init(f"{op.out}.sc_steps", np.array([s, s])),
    )
    sub = g.node("Slice", [op.residual, starts, ends, axes, steps], f"{op.out}.sc_sub")
    pads = g.init(f"{op.out}.sc_pads", np.array([0, before, 0, 0, 0, after, 0, 0]))
    return g.node("Pad", [sub, pads], f"{op.out}.shortcut")


def _activation(g: _Graph, y: str, act: tuple[float, int], out: str) -> None:
    """α·clamp(⌈y/α⌉, 0, L) as Div, Ceil, QuantizeLinear (scale 1), Clip, DequantizeLinear (scale α)."""
    alpha, top = act
    u8 = lambda v: np.array(v, np.uint8)  # noqa: E731
    u = g.node("Div", [y, g.init(f"{out}.alpha", np.float32(alpha))], f"{out}.u")
    ceil = g.node("Ceil", [u], f"{out}.ceil")
    one, zero = g.init(f"{out}.one", np.float32(1.0)), g.init(f"{out}.zero", u8(0))
    q = g.node("QuantizeLinear", [ceil, one, zero], f"{out}.q")
    level = g.node("Clip", [q, zero, g.init(f"{out}.top", u8(top))], f"{out}.level")
    g.node("DequantizeLinear", [level, f"{out}.alpha", zero], out)


def with_level_outputs(model: onnx.ModelProto, values: list[str]) -> onnx.ModelProto:
    """A copy whose outputs also include each activation's uint8 level tensor ``<value>.level``."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    copy.graph.output.extend(
        helper.make_tensor_value_info(f"{v}.level", TensorProto.UINT8, None) for v in values
    )
    return copy
