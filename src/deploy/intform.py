"""The integer-only form of an exported net, and its pure-numpy runner: the readable reference of what
integer hardware computes.

Values between layers are level indices k (uint8), never α·k. A conv/linear layer multiplies its integer
weights q (bit-packed at their width) with the levels into an integer accumulator acc, and BN + the quantized
activation become per-channel integer thresholds on acc (FINN's MultiThreshold, ``level = #{t_j ≤ acc}``):
with z = a·acc + b the layer's real output (a = α_in·s, s the weight scale, b the bias), the ceil staircase
gives level ≥ j ⇔ (z − μ)/σ > (j−1)α ⇔ acc > T_j := (μ − b + σ(j−1)α)/a, strict because ⌈·⌉ maps a value
exactly on (j−1)α to level j−1. So t_j = ⌊T_j⌋ + 1, and level = #{t_j ≤ acc} holds exactly for every integer acc.
A residual block adds α_sc·k_sc to the BN output: acc + r·k_sc > T_j with r = σα_sc/a, computed as
(acc << n) + M·k_sc with a 31-bit multiplier M = round(r·2^n) per channel and one shift n per layer, against
thresholds ⌊T_j·2^n⌋ + 1 (the fixed-point rescale of integer engines such as TFLite).

Where an input or a weight is float (the first layer reads the float normalised image; float weights, by
default those of the first and last layer), the accumulator is float (float64 here) and the thresholds are
float: t_j = the next float64 above T_j, so that ``t_j ≤ acc`` is ``acc > T_j``. The logits are a·acc + b.
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np

from src.deploy.plan import Op

NEVER = np.iinfo(np.int64).max  # integer thresholds of a level no accumulator reaches (all-zero weights)
MULTIPLIER_BITS = 31  # residual rescale: M < 2^31, an int32 multiplier as integer engines use
FORMAT = "ste-lab-int/1"


def codebook(quantizer: str, bits: int) -> np.ndarray:
    """The integer weight level of each stored code: binary {−1, 1}, ternary {−1, 0, 1}, uniform −Qp..Qp."""
    if quantizer == "binary":
        return np.array([-1, 1], np.int8)
    qp = 1 if quantizer == "ternary" else 2 ** (bits - 1) - 1
    return np.arange(-qp, qp + 1, dtype=np.int8)


def pack(codes: np.ndarray, bits: int) -> np.ndarray:
    """Unsigned codes < 2^bits, ``bits`` bits each, least significant bit first, into bytes."""
    planes = (codes.reshape(-1, 1).astype(np.int64) >> np.arange(bits)) & 1  # (n, bits)
    return np.packbits(planes.astype(np.uint8).ravel(), bitorder="little")


def unpack(packed: np.ndarray, bits: int, count: int) -> np.ndarray:
    """The inverse of pack: ``count`` codes as int64."""
    planes = np.unpackbits(packed, count=count * bits, bitorder="little").reshape(count, bits)
    return (planes.astype(np.int64) << np.arange(bits)).sum(1)


def build(ops: list[Op], in_shape: tuple[int, ...]) -> tuple[list[dict], dict[str, np.ndarray]]:
    """The integer program (JSON-able op list) and its arrays, from the planned ops of a model."""
    program, arrays = [], {}
    scale = {"input": None}  # value → α of its levels (None: the float input); after avgpool α/(H·W)
    levels = {"input": None}  # value → the largest level index it can hold
    shape = {"input": tuple(in_shape)}
    for i, op in enumerate(ops):
        src_scale, src_shape = scale[op.src], shape[op.src]
        entry = {"op": op.kind, "src": op.src, "out": op.out}
        if op.kind in ("conv", "linear"):
            entry |= _layer(op, f"op{i}", src_scale, levels[op.src], arrays, scale, levels)
            shape[op.out] = _layer_shape(op, src_shape)
            entry["macs"] = int(np.prod(shape[op.out]) * np.prod(op.weights_shape()[1:]))
            scale[op.out], levels[op.out] = (op.act[0], op.act[1]) if op.act else (None, None)
        elif op.kind == "maxpool":
            entry["size"] = op.size
            c, h, w = src_shape
            shape[op.out] = (c, h // op.size, w // op.size)
            scale[op.out], levels[op.out] = src_scale, levels[op.src]
        elif op.kind == "avgpool":  # the sum of levels: integer; the 1/(H·W) joins the next layer's scale
            c, h, w = src_shape
            shape[op.out], scale[op.out], levels[op.out] = (c,), src_scale / (h * w), levels[op.src] * h * w
        else:  # flatten
            shape[op.out] = (int(np.prod(src_shape)),)
            scale[op.out], levels[op.out] = src_scale, levels[op.src]
        program.append(entry)
    return program, arrays


def _layer_shape(op: Op, src_shape) -> tuple[int, ...]:
    out_channels, *kernel = op.weights_shape()
    if op.kind == "linear":
        return (out_channels,)
    _, h, w = src_shape
    k = kernel[-1]
    return (
        out_channels,
        (h + 2 * op.padding - k) // op.stride + 1,
        (w + 2 * op.padding - k) // op.stride + 1,
    )


def _layer(op: Op, key: str, alpha_in, max_in, arrays: dict, scale: dict, levels: dict) -> dict:
    """Weights, accumulator kind and thresholds (or the logits' dequantisation) of one conv/linear op."""
    wt = op.weights
    integer = alpha_in is not None and wt.q is not None
    entry = {"stride": op.stride, "padding": op.padding, "acc": "int" if integer else "float"}
    if wt.q is None:
        arrays[f"{key}.weight"] = wt.values
        entry["weight"] = {"shape": list(wt.values.shape), "dtype": "float32"}
    else:
        book = codebook(wt.quantizer, wt.bits)
        codes = np.searchsorted(book, wt.q.ravel())
        arrays[f"{key}.weight"], arrays[f"{key}.codebook"] = pack(codes, wt.bits), book
        entry["weight"] = {"shape": list(wt.q.shape), "bits": wt.bits, "quantizer": wt.quantizer}
    channels = op.weights_shape()[0]
    a = (1.0 if alpha_in is None else alpha_in) * (np.ones(channels) if wt.scale is None else wt.scale)
    b = np.zeros_like(a) if op.bias is None else op.bias
    if op.act is None:  # the logits
        arrays[f"{key}.scale"], arrays[f"{key}.bias"] = a, b
        return entry
    mu, sigma = op.bn
    alpha, top = op.act
    numer = mu[:, None] - b[:, None] + sigma[:, None] * alpha * np.arange(top)  # (C, L): a·T_j
    if op.residual is None:
        thresholds = _thresholds(numer, a, integer, shift=0)
    else:
        alpha_sc = scale[op.residual]
        a_eff = np.where(a > 0, a, sigma * alpha_sc)  # all-zero weights: acc = 0, so only M·k_sc counts
        ratio = sigma * alpha_sc / a_eff  # r per channel
        shift = 0
        if integer:
            bound = np.prod(op.weights_shape()[1:]) * np.abs(wt.q).max(initial=1) * max_in
            shift = _shift(bound, levels[op.residual], ratio.max())
            arrays[f"{key}.multiplier"] = np.rint(np.ldexp(ratio, shift)).astype(np.int64)
        else:
            arrays[f"{key}.multiplier"] = ratio
        thresholds = _thresholds(numer, a_eff, integer, shift)
        entry["residual"] = {"src": op.residual, "shift": shift, **op.shortcut}
    arrays[f"{key}.thresholds"] = thresholds
    return entry


def _shift(acc_bound: float, top_sc: int, ratio_max: float) -> int:
    """The largest n with M = round(r·2^n) < 2^31 and (acc << n) + M·k_sc inside int64."""
    n = MULTIPLIER_BITS - 1 - math.ceil(math.log2(ratio_max))
    room = 62 - math.ceil(math.log2(acc_bound + top_sc * ratio_max + 1))
    n = min(n, room)
    if n < 0:
        raise ValueError(f"residual rescale out of range (r up to {ratio_max:.3g}): not exportable")
    return n


def _thresholds(numer: np.ndarray, a: np.ndarray, integer: bool, shift: int) -> np.ndarray:
    """t_j with level = #{t_j ≤ acc}: ⌊T_j·2^shift⌋ + 1 (integer) or the float64 just above T_j."""
    with np.errstate(divide="ignore", invalid="ignore"):
        t = numer / a[:, None]
    dead = np.broadcast_to(a[:, None] == 0, t.shape)  # acc ≡ 0: level j iff 0 > a·T_j
    if integer:
        # beyond ±2^62 no accumulator reaches (the shift keeps |acc·2^n + M·k| below it): clip, then cast
        scaled = np.clip(np.floor(np.ldexp(np.where(dead, 0.0, t), shift)), -(2.0**62), 2.0**62)
        out = scaled.astype(np.int64) + 1
        return np.where(dead, np.where(numer < 0, np.iinfo(np.int64).min, NEVER), out)
    return np.where(dead, np.where(numer < 0, -np.inf, np.inf), np.nextafter(t, np.inf))


def save(path: Path | io.BytesIO, program: list[dict], arrays: dict, meta: dict) -> None:
    """One .npz: the arrays and the program as JSON bytes (no pickle: np.load(allow_pickle=False) reads it)."""
    header = json.dumps({"format": FORMAT, "ops": program, **meta}).encode()
    np.savez(path, program=np.frombuffer(header, np.uint8), **arrays)


def load(path: Path) -> tuple[list[dict], dict[str, np.ndarray]]:
    """(program ops, arrays) of a saved integer form."""
    with np.load(path, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    header = json.loads(arrays.pop("program").tobytes())
    if header.get("format") != FORMAT:
        raise ValueError(f"{path} is not an integer form of this project ({FORMAT})")
    return header["ops"], arrays
