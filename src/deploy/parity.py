"""The export's parity check: PyTorch's fake-quantized model, onnxruntime on the exported graph and the
integer runner, on the same normalised examples.

Reported: top-1 of each, prediction agreement of each pair (%), the largest |logit difference| of each pair,
and per quantized activation the fraction of its elements whose level differs from PyTorch's: end to end, and
"local", the integer layer fed PyTorch's levels of the layer before. The local ones are the ties: elements
whose pre-activation lies within a float rounding error of a threshold (src/deploy/onnx_graph.py); end to end,
each tie also changes the inputs of the layers after it, so the counts grow with depth.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from src.deploy.onnx_graph import with_level_outputs
from src.deploy.runner import decode_weights, run

ENGINES = ("pytorch", "onnxruntime", "integer")
PAIRS = (("onnxruntime", "pytorch"), ("integer", "pytorch"), ("onnxruntime", "integer"))
# levels: end to end (a tie early on changes later layers' inputs), and "local": the integer form's layer run
# on PyTorch's levels of the layer before, so that it counts this layer's own ties only
LEVEL_PAIRS = (("onnxruntime", "pytorch"), ("integer", "pytorch"), ("local", "pytorch"))


def session(model: onnx.ModelProto, threads: int = 1) -> ort.InferenceSession:
    """An onnxruntime CPU session on ``threads`` threads (default graph optimisations)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = threads
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def torch_levels(model: nn.Module, acts: dict[str, nn.Module], alphas: dict[str, float]):
    """Forward hooks filling a dict {value: level indices} from each QuantReLU's output α·k; remove them after."""
    store, handles = {}, []
    for value, module in acts.items():
        alpha = alphas[value]

        def hook(_m, _inp, out, value=value, alpha=alpha):
            store[value] = torch.round(out.detach().float() / alpha).to(torch.uint8).numpy()

        handles.append(module.register_forward_hook(hook))
    return store, handles


def parity(model: nn.Module, ops, proto: onnx.ModelProto, program, arrays,
           batches: Iterable[tuple[torch.Tensor, torch.Tensor]], threads: int = 1) -> dict:  # fmt: skip
    """Run the three engines over ``batches`` of (normalised x, labels) and compare them (module docstring)."""
    acts = {op.out: op.module for op in ops if op.act is not None}
    alphas = {op.out: op.act[0] for op in ops if op.act is not None}
    clean, probed = session(proto, threads), session(with_level_outputs(proto, list(acts)), threads)
    level_names = ["logits"] + [f"{v}.level" for v in acts]
    weights = decode_weights(program, arrays)
    stats = _Stats(list(acts))
    store, handles = torch_levels(model, acts, alphas)
    try:
        for x, y in batches:
            with torch.no_grad():
                logits = {"pytorch": model(x).float().numpy()}
            xn = x.numpy().astype(np.float32)
            logits["onnxruntime"] = clean.run(["logits"], {"input": xn})[0]
            ort_levels = dict(zip(acts, probed.run(level_names, {"input": xn})[1:], strict=True))
            logits["integer"], int_levels = run(program, arrays, xn, weights)
            _, local = run(program, arrays, xn, weights, given=store)  # each layer from PyTorch's input
            levels = {"pytorch": store, "onnxruntime": ort_levels, "integer": int_levels, "local": local}
            stats.add(logits, levels, y.numpy())
    finally:
        for h in handles:
            h.remove()
    return stats.summary()


class _Stats:
    """Running counts over batches (the levels of a whole validation set need not fit in memory)."""

    def __init__(self, values: list[str]):
        self.n = 0
        self.correct = dict.fromkeys(ENGINES, 0)
        self.agree = dict.fromkeys(PAIRS, 0)
        self.max_diff = dict.fromkeys(PAIRS, 0.0)
        self.elements = dict.fromkeys(values, 0)
        self.mismatch = {v: dict.fromkeys(LEVEL_PAIRS, 0) for v in values}

    def add(self, logits: dict, levels: dict, labels: np.ndarray) -> None:
        preds = {e: logits[e].argmax(1) for e in ENGINES}
        self.n += len(labels)
        for e in ENGINES:
            self.correct[e] += int((preds[e] == labels).sum())
        for a, b in PAIRS:
            self.agree[a, b] += int((preds[a] == preds[b]).sum())
            self.max_diff[a, b] = max(self.max_diff[a, b], float(np.abs(logits[a] - logits[b]).max()))
        for v in self.elements:
            self.elements[v] += levels["pytorch"][v].size
            for a, b in LEVEL_PAIRS:
                self.mismatch[v][a, b] += int((levels[a][v] != levels[b][v]).sum())

    def summary(self) -> dict:
        pct = lambda k: 100.0 * k / max(self.n, 1)  # noqa: E731
        name = lambda pair: f"{pair[0]}_vs_{pair[1]}"  # noqa: E731
        return {
            "examples": self.n,
            "top1": {e: pct(self.correct[e]) for e in ENGINES},
            "agreement": {name(p): pct(self.agree[p]) for p in PAIRS},
            "max_abs_logit_diff": {name(p): self.max_diff[p] for p in PAIRS},
            "level_mismatch": {
                v: {"elements": self.elements[v]}
                | {name(p): {"count": c, "fraction": c / max(self.elements[v], 1)} for p, c in counts.items()}
                for v, counts in self.mismatch.items()
            },
        }
