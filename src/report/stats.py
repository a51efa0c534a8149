"""The statistics behind every comparison: a group's mean ± std with its 95 % interval (Student's t over seeds, or the
binomial SE of one run's test accuracy), and the interval of the difference between two groups (paired over shared
seeds, else Welch's). A group is anything with ``finished(metric)`` → [(seed, value)] and ``runs`` (src.report.compare).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from src.report.compare import Group

# two-sided 95 % quantiles of Student's t for 1..30 degrees of freedom (beyond: the normal's 1.96)
T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
        2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)  # fmt: skip


def t975(df: float) -> float:
    """Student's t 97.5 % quantile (two-sided 95 %) for ``df`` degrees of freedom (rounded down)."""
    return T975[int(df) - 1] if df < len(T975) + 1 else 1.96


@dataclass(frozen=True)
class Stat:
    """A group's metric over seeds: mean, sample std, n, and the half-width of its 95 % interval (``how``)."""

    mean: float | None
    std: float | None
    n: int
    half: float | None
    how: str  # "t" (over seeds), "binomial" (one run: test-set size), "" (none)


def stat(group: Group, metric: str) -> Stat:
    """Mean ± std, n and the 95 % half-width; n = 1 accuracies use the binomial SE of the test set."""
    values = [v for _, v in group.finished(metric)]
    n = len(values)
    if n == 0:
        return Stat(None, None, 0, None, "")
    mean = statistics.fmean(values)
    if n > 1:
        std = statistics.stdev(values)
        return Stat(mean, std, n, t975(n - 1) * std / math.sqrt(n), "t")
    se = binomial_se(mean, group.runs[0]["val_examples"]) if "acc" in metric else None
    return Stat(mean, None, 1, None if se is None else 1.96 * se, "binomial" if se is not None else "")


def binomial_se(acc_percent: float, examples: int | None) -> float | None:
    """Standard error (in points) of an accuracy measured on ``examples`` test images: 100·√(p(1−p)/N)."""
    if not examples:
        return None
    p = acc_percent / 100
    return 100 * math.sqrt(p * (1 - p) / examples)


@dataclass(frozen=True)
class Difference:
    """a − b on final top-1: mean, 95 % half-width, how many shared seeds a won, and how it was computed."""

    mean: float
    half: float | None
    wins: int
    pairs: int
    how: str


def difference(a: Group, b: Group, metric: str = "val_acc") -> Difference | None:
    """a − b: paired over shared seeds (≥ 2), else Welch's interval (a one-run side: see ``welch_term``)."""
    va, vb = dict(a.finished(metric)), dict(b.finished(metric))
    if not va or not vb:
        return None
    shared = sorted(set(va) & set(vb), key=str)
    wins = sum(va[s] > vb[s] for s in shared)
    if len(shared) >= 2:
        d = [va[s] - vb[s] for s in shared]
        half = t975(len(d) - 1) * statistics.stdev(d) / math.sqrt(len(d))
        return Difference(statistics.fmean(d), half, wins, len(shared), "paired")
    sa, sb = stat(a, metric), stat(b, metric)
    terms = [welch_term(sa, sb), welch_term(sb, sa)]
    if None in terms:
        return Difference(sa.mean - sb.mean, None, wins, len(shared), "no interval")
    var = sum(v for v, _, _ in terms)
    tail = sum(v**2 / df for v, df, _ in terms if df < math.inf)  # Welch–Satterthwaite
    df = var**2 / tail if tail else math.inf
    how = "Welch, the single run given the other group's seed spread" if any(t[2] for t in terms) else "Welch"
    return Difference(sa.mean - sb.mean, t975(df) * math.sqrt(var), wins, len(shared), how)


def welch_term(s: Stat, other: Stat) -> tuple[float, float, bool] | None:
    """One side's variance of its mean, its degrees of freedom, and whether it was borrowed. A single run is at
    least as uncertain as one seed of a repeated group, so it takes the larger of its binomial variance (test-set
    size, infinite df) and the other side's seed variance s² (n − 1 df): the binomial alone leaves seed noise out."""
    if s.n > 1:
        return s.std**2 / s.n, s.n - 1, False
    binomial = (s.half / 1.96) ** 2 if s.half else None
    if other.n > 1 and (binomial is None or other.std**2 > binomial):
        return other.std**2, other.n - 1, True
    return None if binomial is None else (binomial, math.inf, False)


def winner(a: Group, b: Group) -> Group | None:
    """The group with the higher final top-1 when the 95 % CI of their difference excludes 0, else None."""
    d = difference(a, b)
    if d is None or d.half is None or abs(d.mean) <= d.half:
        return None
    return a if d.mean > 0 else b
