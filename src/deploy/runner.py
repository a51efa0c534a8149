"""Run the integer form (src/deploy/intform.py) with numpy: levels in, levels out, integer accumulators.

Integer products are summed by a float64 matrix product (BLAS): exact, because every partial sum is an integer
far below 2^53 (at most fan-in · 127 · 255 · H·W), and then held as int64 for the thresholds. It is the
readable reference of the arithmetic, not a fast engine.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from src.deploy.intform import codebook, unpack


def decode_weights(program: list[dict], arrays: dict) -> dict[str, np.ndarray]:
    """{op key: float64 weights}: the integer levels (unpacked through the codebook) or the float values."""
    weights = {}
    for i, op in enumerate(program):
        if op["op"] not in ("conv", "linear"):
            continue
        key, spec = f"op{i}", op["weight"]
        if "bits" in spec:
            codes = unpack(arrays[f"{key}.weight"], spec["bits"], int(np.prod(spec["shape"])))
            book = arrays[f"{key}.codebook"]
            assert np.array_equal(book, codebook(spec["quantizer"], spec["bits"]))
            weights[key] = book[codes].reshape(spec["shape"]).astype(np.float64)
        else:
            weights[key] = arrays[f"{key}.weight"].astype(np.float64)
    return weights


def run(
    program: list[dict], arrays: dict, x: np.ndarray, weights: dict | None = None, given: dict | None = None
):
    """(logits float32 (N, classes), {value: levels uint8}) for the normalised float input x (N, C, H, W).

    ``given`` {value: levels}: each later op reads these instead of the levels computed here, so a layer's
    levels differ from another engine's only by its own ties, not by those of the layers before it.
    """
    given = given or {}
    weights = weights if weights is not None else decode_weights(program, arrays)
    values: dict[str, np.ndarray] = {"input": x.astype(np.float64)}
    levels = {}
    for i, op in enumerate(program):
        key, src, kind = f"op{i}", values[op["src"]], op["op"]
        if kind == "maxpool":
            values[op["out"]] = maxpool(src, op["size"])
        elif kind == "avgpool":  # sum of levels; the 1/(H·W) is in the next layer's scale
            values[op["out"]] = src.sum((2, 3), dtype=np.int64)
        elif kind == "flatten":
            values[op["out"]] = src.reshape(len(src), -1)
        else:
            acc = _accumulate(op, src, weights[key])
            if "residual" in op:
                acc = add_shortcut(
                    acc, values[op["residual"]["src"]], op["residual"], arrays[f"{key}.multiplier"]
                )
            if f"{key}.thresholds" in arrays:
                levels[op["out"]] = multithreshold(acc, arrays[f"{key}.thresholds"])
                values[op["out"]] = given.get(op["out"], levels[op["out"]])
            else:
                values[op["out"]] = (acc * arrays[f"{key}.scale"] + arrays[f"{key}.bias"]).astype(np.float32)
    return values["logits"], levels


def _accumulate(op: dict, src: np.ndarray, w: np.ndarray) -> np.ndarray:
    x = src.astype(np.float64)
    acc = conv2d(x, w, op["stride"], op["padding"]) if op["op"] == "conv" else x @ w.T
    return acc.astype(np.int64) if op["acc"] == "int" else acc  # exact integers (module docstring)


def conv2d(x: np.ndarray, w: np.ndarray, stride: int, padding: int) -> np.ndarray:
    """Cross-correlation of x (N, C, H, W) with w (O, C, k, k), zero padding (level 0 is the value 0)."""
    k = w.shape[-1]
    x = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    windows = sliding_window_view(x, (k, k), axis=(2, 3))[:, :, ::stride, ::stride]  # (N, C, Ho, Wo, k, k)
    n, c, ho, wo = windows.shape[:4]
    cols = windows.transpose(0, 2, 3, 1, 4, 5).reshape(n, ho, wo, c * k * k)
    return (cols @ w.reshape(len(w), -1).T).transpose(0, 3, 1, 2)  # (N, O, Ho, Wo)


def maxpool(x: np.ndarray, size: int) -> np.ndarray:
    """k×k max-pool with stride k (the levels are monotone in the value, so the pool commutes with them)."""
    n, c, h, w = x.shape
    x = x[:, :, : h // size * size, : w // size * size]
    return x.reshape(n, c, h // size, size, w // size, size).max((3, 5))


def add_shortcut(acc: np.ndarray, shortcut: np.ndarray, spec: dict, multiplier: np.ndarray) -> np.ndarray:
    """acc·2^n + M·k_sc (integer) or acc + r·k_sc (float), k_sc the block input subsampled and zero-padded."""
    k = shortcut[:, :, :: spec["stride"], :: spec["stride"]].astype(np.int64)
    k = np.pad(k, ((0, 0), tuple(spec["pad"]), (0, 0), (0, 0)))
    m = multiplier.reshape(1, -1, 1, 1)
    if acc.dtype == np.int64:
        return np.left_shift(acc, spec["shift"]) + m * k
    return acc + m * k


def multithreshold(acc: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """level = #{t_j ≤ acc} per channel (axis 1); each channel's thresholds ascend."""
    out = np.empty(acc.shape, np.uint8)
    for c, t in enumerate(thresholds):
        out[:, c] = np.searchsorted(t, acc[:, c], side="right")
    return out
