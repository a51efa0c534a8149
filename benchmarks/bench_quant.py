"""Train-step time of ResNet-20 with QuantReLU (each paper STE) versus nn.ReLU, measured side by side.

    python benchmarks/bench_quant.py [--batch 128] [--rounds 5] [--steps 3] [--compile]

Each round times every variant in turn (interleaved, so drift in machine load hits all alike); the table shows
the median step time and its ratio to nn.ReLU. Goal: ≤ 1.10× on CPU.
"""

import argparse
import platform
import statistics
import time
from functools import partial

import torch
from torch import nn

from src.models import build_model
from src.quant import QuantReLU


def make_step(act, batch: int, compile: bool):
    """A closure running one SGD step of ResNet-20 built with ``act`` on a fixed random CIFAR-sized batch."""
    torch.manual_seed(0)
    model = build_model("resnet20", act=act)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x, y = torch.randn(batch, 3, 32, 32), torch.randint(0, 10, (batch,))
    forward = torch.compile(model) if compile else model

    def step():
        opt.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(forward(x), y).backward()
        opt.step()

    return step


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=3, help="steps timed per variant per round")
    parser.add_argument("--bits", type=int, default=2)
    parser.add_argument("--compile", action="store_true", help="torch.compile every variant")
    args = parser.parse_args()
    variants = {"nn.ReLU": nn.ReLU}
    for ste in ("identity", "relu", "clipped_relu"):
        variants[f"QuantReLU {ste}"] = partial(QuantReLU, args.bits, "lloyd", ste)
    steps = {name: make_step(act, args.batch, args.compile) for name, act in variants.items()}
    for step in steps.values():  # warm-up: allocator, oneDNN primitives, compilation
        step()
        step()
    times = {name: [] for name in steps}
    for _ in range(args.rounds):
        for name, step in steps.items():
            start = time.perf_counter()
            for _ in range(args.steps):
                step()
            times[name].append((time.perf_counter() - start) / args.steps)
    base = statistics.median(times["nn.ReLU"])
    print(
        f"ResNet-20 train step, batch {args.batch}, {args.bits}-bit, {'compiled' if args.compile else 'eager'};"
        f" torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}"
    )
    print(f"{'variant':<24}{'median s/step':>14}{'ratio':>8}")
    for name, ts in times.items():
        print(f"{name:<24}{statistics.median(ts):>14.4f}{statistics.median(ts) / base:>8.3f}")


if __name__ == "__main__":
    main()
