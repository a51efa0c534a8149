"""Before a group trains: does its stack fit in memory, and is it faster than its jobs one after another here?

Both are measured on copies of the group's first model (the runs themselves are not touched): a few SGD steps
of K copies one by one against the same steps of their stack, on the job's own batch shape and device.
"""

from __future__ import annotations

import copy
import time

import torch

from src.stack import StackedModels, stacked_loss


class StackTooBig(RuntimeError):
    """The stack of a group does not fit in memory (one line: the group, K, a smaller max_stack to try)."""


def is_out_of_memory(err: BaseException) -> bool:
    """CUDA's OutOfMemoryError, or the CPU allocator's 'can't allocate memory' RuntimeError."""
    text = str(err)
    return (
        isinstance(err, torch.OutOfMemoryError) or "can't allocate memory" in text or "out of memory" in text
    )


def _steps(step, n: int) -> float:
    """Seconds per step of ``step`` over n steps after one warm-up (which also allocates what a step needs)."""
    step()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(n):
        step()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / max(n, 1)


def speedup(
    model: torch.nn.Module, base, loss_fn, x: torch.Tensor, y: torch.Tensor, k: int, steps: int
) -> float:
    """Throughput of a stack of k copies of ``model`` over k copies stepped one by one (> 1: the stack is faster).

    ``x`` (B, ...), ``y`` (B,): one training batch; ``steps`` = 0 only checks that the stack fits (returns 0).
    Raises StackTooBig when it does not.
    """
    copies = [copy.deepcopy(model).train() for _ in range(k)]
    stacked = StackedModels(copies, base)
    opt = torch.optim.SGD(stacked.parameters(), lr=1e-6, momentum=0.9)
    xs, ys = x.expand(k, *x.shape), y.expand(k, *y.shape)  # (K, B, ...), no copy

    def stacked_step():
        opt.zero_grad()
        stacked_loss(loss_fn, stacked(xs), ys).backward()
        opt.step()

    try:
        if steps == 0:
            stacked_step()
            return 0.0
        one = copies[0]
        one_opt = torch.optim.SGD(one.parameters(), lr=1e-6, momentum=0.9)

        def one_step():
            one_opt.zero_grad()
            loss_fn(one(x), y).backward()
            one_opt.step()

        return k * _steps(one_step, steps) / _steps(stacked_step, steps)
    except (RuntimeError, torch.OutOfMemoryError) as err:
        if is_out_of_memory(err):
            raise StackTooBig(str(err).splitlines()[0]) from None
        raise
