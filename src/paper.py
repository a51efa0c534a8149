"""Yin et al., ICLR 2019: the numbers and protocol this project reproduces, in one place (../shared/PAPER.md).

The report (Table 1 with Δ, Figures 2 and 4), the pipeline's profiles and the tests read them from here.
"""

from __future__ import annotations

PAPER_STES = ("identity", "relu", "clipped_relu")

# §4.1, Table 1 verbatim: (data, model, bits) -> ste -> (final training loss, validation acc %), in its layout
# fmt: off
TABLE1: dict[tuple[str, str, int], dict[str, tuple[float, float]]] = {
    ("mnist", "lenet5", 2):     {"identity": (2.6e-2, 98.49), "relu": (5.1e-3, 99.24), "clipped_relu": (5.4e-3, 99.23)},
    ("mnist", "lenet5", 4):     {"identity": (6.0e-3, 98.98), "relu": (9.0e-4, 99.32), "clipped_relu": (8.8e-4, 99.24)},
    ("cifar10", "vgg11", 2):    {"identity": (0.19, 86.58),   "relu": (0.10, 88.69),   "clipped_relu": (0.02, 90.92)},
    ("cifar10", "vgg11", 4):    {"identity": (3.1e-2, 90.19), "relu": (1.5e-3, 92.01), "clipped_relu": (1.3e-3, 92.08)},
    ("cifar10", "resnet20", 2): {"identity": (1.56, 46.52),   "relu": (1.50, 48.05),   "clipped_relu": (0.24, 88.39)},
    ("cifar10", "resnet20", 4): {"identity": (1.38, 54.16),   "relu": (0.25, 86.59),   "clipped_relu": (0.04, 91.24)},
}
# App. B, Table 2 verbatim: the schedule of every Table-1 run (step decay ×0.1 at each milestone)
TABLE2: dict[str, dict] = {
    "lenet5":   {"epochs": 50,  "batch_size": 64,  "lr": 0.1,  "gamma": 0.1, "milestones": [20, 40]},
    "vgg11":    {"epochs": 200, "batch_size": 128, "lr": 0.01, "gamma": 0.1, "milestones": [80, 140]},
    "resnet20": {"epochs": 200, "batch_size": 128, "lr": 0.01, "gamma": 0.1, "milestones": [80, 140]},
}
# fmt: on
TRAIN_EXAMPLES = {"mnist": 60_000, "cifar10": 50_000}  # the full training sets Table 1 trained on


def protocol_gaps(run) -> list[str]:
    """How a quantized Table-1-style run differs from Table 2's protocol (empty: it is the paper's).

    Table 2's epochs, batch, lr, milestones and decay; the full training and test sets; started from a float
    checkpoint (the paper fine-tunes from FP weights, §4); every epoch run. ``run``: a src/runs Run.
    """
    paper = TABLE2.get(run["model"])
    if paper is None:
        return [f"model {run['model']} is not in the paper's Table 1"]
    have = {
        "epochs": run.get("trainer.max_epochs"),
        "batch_size": run.get("data.batch_size"),
        "lr": run.get("optimizer.lr"),
        "gamma": run.get("scheduler.gamma"),
        "milestones": run.get("scheduler.milestones"),
    }
    gaps = [f"{k} {have[k]} (paper {v})" for k, v in paper.items() if str(have[k]) != str(v)]
    if run["epochs"] is not None and have["epochs"] is not None and run["epochs"] < have["epochs"]:
        gaps.append(f"stopped at epoch {run['epochs']}")
    for key in ("data.train_subset", "data.val_subset"):
        if run.get(key) is not None:
            gaps.append(f"{key.split('.')[1]} {run.get(key)} (paper: all)")
    if run.get("data.holdout"):
        gaps.append(f"holdout {run.get('data.holdout')} (paper: none)")
    if not run.get("init.checkpoint"):
        gaps.append("from scratch (paper: from a float checkpoint)")
    return gaps
