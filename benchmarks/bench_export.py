"""CPU inference speed and size of an exported net: onnxruntime on model.onnx against PyTorch eager.

    python benchmarks/bench_export.py [--models lenet5,resnet20] [--bits 2] [--wquant uniform --wbits 2]
        [--threads 1] [--seconds 2.0] [--rounds 5]

Per model (built as src.train builds it, weights random, BN statistics from a few random batches: speed and
size do not depend on training), in the model's input shape:
- latency at batch 1 (median ms per call) and throughput at batch 256 (examples/s) of onnxruntime on the
  exported graph (default optimisations), PyTorch eager on the fake-quantized model (QuantReLU, quantized
  weights) and PyTorch eager on the same architecture in float (ReLU, float weights), and the integer runner
  (numpy, src/deploy/runner.py: a readable reference, not an engine) at batch 64;
- sizes: model.onnx, the integer form (.npz, weights bit-packed), the float32 state dict.
Timing: --rounds interleaved rounds (each engine and batch size in turn, so that a change in machine load hits
all alike); in each, warm-up calls, then the calls that fit in --seconds/--rounds (at least 5 at batch 1, 1 at batch 256), median per call;
the median over rounds is reported.
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import statistics
import time
from functools import partial

import numpy as np
import onnxruntime
import torch

from src.deploy import intform
from src.deploy.onnx_graph import build_onnx
from src.deploy.parity import session
from src.deploy.plan import plan_model
from src.deploy.runner import decode_weights, run
from src.models import build_model
from src.provenance import cpu_name
from src.quant import QuantReLU
from src.quant.weights import weight_quantizer

SHAPES = {"lenet5": (1, 28, 28), "vgg11": (3, 32, 32), "resnet20": (3, 32, 32)}
BATCH = 256


def calibrated(name: str, quantized: bool, bits: int, wquant: str, wbits) -> torch.nn.Module:
    """The model with BN running statistics from 4 random batches, in eval mode."""
    torch.manual_seed(0)
    act = partial(QuantReLU, bits=bits if quantized else None, alpha="lloyd")
    scale = {"scale": "lloyd"} if wquant == "uniform" else {}  # conf/wquant/uniform.yaml's step
    wq = weight_quantizer(wquant, bits=wbits, **scale) if quantized and wquant != "fp" else None
    model = build_model(name, act=act, in_shape=SHAPES[name], wquant=wq)
    with torch.no_grad():
        for _ in range(4):
            model(torch.randn(64, *SHAPES[name]))
    return model.eval()


def median_seconds(fn, seconds: float, warmup: int = 2, calls: int = 5) -> float:
    """Median wall time of one call of fn over at least ``calls`` calls and ``seconds``, after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    times, start = [], time.perf_counter()
    while len(times) < calls or time.perf_counter() - start < seconds:
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def bench_model(name: str, args) -> list[str]:
    fake = calibrated(name, True, args.bits, args.wquant, args.wbits)
    float_model = calibrated(name, False, args.bits, args.wquant, args.wbits)
    ops = plan_model(fake)
    proto = build_onnx(ops, SHAPES[name], 10)
    sess = session(proto, args.threads)
    program, arrays = intform.build(ops, SHAPES[name])
    weights = decode_weights(program, arrays)
    x1, xb = (torch.randn(n, *SHAPES[name]) for n in (1, BATCH))
    engines = {
        "onnxruntime (model.onnx)": lambda x: sess.run(["logits"], {"input": x.numpy()}),
        "PyTorch eager, fake-quant": lambda x: fake(x),
        "PyTorch eager, float": lambda x: float_model(x),
    }
    times = {(label, n): [] for label in engines for n in (1, BATCH)}
    with torch.no_grad():  # interleaved rounds: a change in machine load hits every engine alike
        for _ in range(args.rounds):
            for label, fn in engines.items():
                for n, x in ((1, x1), (BATCH, xb)):
                    calls = 5 if n == 1 else 1  # a ResNet-20 batch of 256 takes seconds
                    times[label, n].append(
                        median_seconds(partial(fn, x), args.seconds / args.rounds, 1, calls)
                    )
    med = {k: statistics.median(v) for k, v in times.items()}
    rows = [
        f"| {name} | {label} | {1e3 * med[label, 1]:.3f} | {BATCH / med[label, BATCH]:,.0f} |"
        for label in engines
    ]
    xs = xb[:64].numpy()  # the reference runner is slow: batch 64, three calls
    numpy_rate = 64 / median_seconds(lambda: run(program, arrays, xs, weights), 0, warmup=1, calls=3)
    rows.append(f"| {name} | integer runner (numpy reference; batch 64) | — | {numpy_rate:,.0f} |")
    buffer = io.BytesIO()
    intform.save(buffer, program, arrays, {})
    float_bytes = 4 * sum(t.numel() for t in float_model.state_dict().values() if t.is_floating_point())
    sizes = f"| {name} | {len(proto.SerializeToString()) / 1024:,.1f} | {len(buffer.getvalue()) / 1024:,.1f} | {float_bytes / 1024:,.1f} |"
    return rows, sizes


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", default="lenet5,resnet20")
    parser.add_argument("--bits", type=int, default=2, help="activation bits")
    parser.add_argument("--wquant", default="uniform", help="fp | binary | ternary | uniform")
    parser.add_argument("--wbits", type=int, default=2, help="weight bits (uniform; binary 1, ternary 2)")
    parser.add_argument("--threads", type=int, default=1, help="threads of torch and onnxruntime")
    parser.add_argument(
        "--seconds", type=float, default=2.0, help="time per engine and batch size, over all rounds"
    )
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (median over them)")
    args = parser.parse_args(argv)
    args.wbits = {"fp": None, "binary": 1, "ternary": 2}.get(args.wquant, args.wbits)
    torch.set_num_threads(args.threads)
    print(f"# {cpu_name()}, {args.threads} thread(s); torch {torch.__version__}, onnxruntime "
          f"{onnxruntime.__version__}, numpy {np.__version__}, python {platform.python_version()}")  # fmt: skip
    print(f"# load average (1 min) at the start: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    print(
        f"# activations {args.bits}-bit, weights {args.wquant} {args.wbits or ''} (first and last layer float)\n"
    )
    timing, sizes = [], []
    for name in args.models.split(","):
        rows, size = bench_model(name, args)
        timing += rows
        sizes.append(size)
    print("| model | engine | latency, batch 1 (ms) | throughput, batch 256 (examples/s) |")
    print("| --- | --- | --- | --- |")
    print("\n".join(timing))
    print("\n| model | model.onnx (KiB) | integer form .npz (KiB) | float32 state dict (KiB) |")
    print("| --- | --- | --- | --- |")
    print("\n".join(sizes))


if __name__ == "__main__":
    main()
