"""Time of Algorithm 1 with exact expected coarse gradients on the two-linear-layer model (src.theory).

    python benchmarks/bench_theory.py [--steps 10000] [--rounds 5] [--m 10] [--n 20]

Each round runs every paper STE in turn (interleaved, so drift in machine load hits all alike) for --steps
iterations, the trajectory recorded at each one; the table shows the median time. Goal: 10⁴ steps at m = 10,
n = 20 in < 1 s, i.e. < 100 µs per step. A quadrature STE (log-tailed ReLU, no closed form) is timed over fewer steps for scale.
"""

import argparse
import platform
import statistics
import time

import torch

from src.theory import coarse_gradient_descent, make_teacher, theorem2_start


def time_run(ste: str, steps: int, m: int, n: int) -> float:
    """Seconds for one exact Algorithm 1 run of ``steps`` iterations from a seeded Theorem 2 start."""
    v_star, w_star = make_teacher(m, n, seed=0)
    v0, w0 = theorem2_start(v_star, w_star, torch.Generator().manual_seed(3))
    start = time.perf_counter()
    coarse_gradient_descent(ste, v0, w0, v_star, w_star, lr=0.1, steps=steps)
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--m", type=int, default=10, help="patches (length of v)")
    parser.add_argument("--n", type=int, default=20, help="input dimension (length of w)")
    args = parser.parse_args()
    stes = ("identity", "relu", "clipped_relu")
    time_run("relu", 100, args.m, args.n)  # warm-up: imports, caches
    times = {ste: [] for ste in stes}
    for _ in range(args.rounds):
        for ste in stes:
            times[ste].append(time_run(ste, args.steps, args.m, args.n))
    quad_steps = max(args.steps // 100, 1)
    quad = statistics.median(
        time_run("log_tailed_relu", quad_steps, args.m, args.n) for _ in range(args.rounds)
    )
    print(
        f"Algorithm 1, exact E g, m={args.m}, n={args.n}, {args.steps} steps, median of {args.rounds};"
        f" torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}"
    )
    print(f"{'STE':<18}{'median s':>10}{'µs/step':>10}{'goal met':>10}")
    for ste, ts in times.items():
        per_step = statistics.median(ts) / args.steps
        print(
            f"{ste:<18}{per_step * args.steps:>10.3f}{per_step * 1e6:>10.1f}{'yes' if per_step < 1e-4 else 'NO':>10}"
        )
    print(
        f"{'log_tailed_relu':<18}{quad:>10.3f}{quad / quad_steps * 1e6:>10.1f}  (quadrature, {quad_steps} steps)"
    )


if __name__ == "__main__":
    main()
