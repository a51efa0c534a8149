"""Choosing a study's winner with the holdout's noise in view: trials within one standard error of the best tie,
and the tie goes to the trial nearest the default (src.tune writes the choice into tuning.json)."""

from __future__ import annotations

import math

RULE = (
    "SE = sqrt(p(1-p)/n) of the best trial's holdout top-1 p on n holdout examples; every finished trial within "
    "one SE of the best ties; the tie goes to the trial nearest the default (Euclidean distance in log10 of each "
    "log-scaled key, in units of its range otherwise), then the higher score"
)


def select(trials: list[dict], default: dict, ranges: dict) -> dict:
    """The winner with the holdout's noise in view (``RULE``): best, its SE, the tie set and the chosen trial."""
    finished = [t for t in trials if t["state"] == "COMPLETE" and t["value"] is not None]
    if not finished:
        return {"rule": RULE, "best_trial": None, "best_value": None, "se": None, "ties": [], "chosen": None}
    best = max(finished, key=lambda t: t["value"])  # the earliest among equal scores
    n, p = best.get("val_examples"), best["value"] / 100
    se = 100 * math.sqrt(p * (1 - p) / n) if n else 0.0  # percentage points
    ties = [t for t in finished if t["value"] >= best["value"] - se - 1e-9]
    far = {t["number"]: distance(t["params"], default, ranges) for t in ties}
    chosen = min(ties, key=lambda t: (far[t["number"]], -t["value"], t["number"]))
    return {
        "rule": RULE,
        "best_trial": best["number"],
        "best_value": best["value"],
        "n_holdout": n,
        "se": se,
        "ties": [t["number"] for t in ties],
        "distance": {str(k): d for k, d in far.items()},  # from the default, of each tied trial
        "chosen": chosen["number"],
    }


def distance(params: dict, default: dict, ranges: dict) -> float:
    """‖params − default‖: in log10 for a log-scaled key, in units of the range otherwise."""
    total = 0.0
    for key, r in ranges.items():
        x, d = params[key], default[key]
        total += math.log10(x / d) ** 2 if r["log"] else ((x - d) / (r["high"] - r["low"])) ** 2
    return math.sqrt(total)
