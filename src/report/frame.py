"""All runs as one pandas table (runs.csv): the knobs that tell runs apart, their metrics, status and path."""

from __future__ import annotations

import pandas as pd

from src.report.runs import Run

# Knobs that change results; runs equal in all of these and the seed are repeats of one configuration.
STE_KNOBS = ["ste", "ste_eps", "ste_beta", "ste_delta"]
PROTOCOL = [
    "optimizer", "lr", "momentum", "weight_decay", "scheduler", "milestones", "gamma", "hold_epochs",
    "hold_factor", "max_epochs", "batch_size", "train_subset", "val_subset",
]  # fmt: skip
# beside (data, model, bits), a non-default value of these makes a separate Table-1 row (e.g. "2 (pact)")
VARIANT_DEFAULTS = {"alpha_mode": "fixed", "alpha": "lloyd", "tag": None}
KNOBS = [
    "kind",
    "experiment",
    "data",
    "model",
    "bits",
    "wquant",
    "wbits",
    "wa",
    *STE_KNOBS,
    *VARIANT_DEFAULTS,
    "init",
    *PROTOCOL,
]
METRICS = [
    "val_acc",
    "val_acc_best",
    "best_epoch",
    "train_loss",
    "val_loss",
    "population_loss",
    "val_examples",
]
INTS = [
    "bits", "wbits", "seed", "epochs", "max_epochs", "best_epoch", "val_examples", "train_subset", "val_subset", "batch_size", "hold_epochs",
]  # fmt: skip
COLUMNS = [
    "run_name",
    *KNOBS,
    "seed",
    "epochs",
    *METRICS,
    "wall_time_s",
    "status",
    "reason",
    "started",
    "git_commit",
    "init_checkpoint",  # names the run it started from (Figures 2 and 4), once its dir is gone
    "path",
]


def _name(target) -> str | None:
    """'torch.optim.SGD' -> 'SGD'."""
    return str(target).rsplit(".", 1)[-1] if target else None


def _scheduler(node: dict) -> dict:
    """Scheduler name, milestones, gamma, hold length and factor; a hold_then scheduler's milestones are its ``then``'s."""
    then = node.get("then") or {}
    return {
        "scheduler": _name(node.get("_target_")),
        "milestones": str(node.get("milestones", then.get("milestones"))),
        "gamma": node.get("gamma", then.get("gamma")),
        "hold_epochs": node.get("hold_epochs"),
        "hold_factor": node.get("hold_factor"),  # the held lr is lr × hold_factor (Figure 2's 1e-5)
    }


def knobs(run: Run) -> dict:
    """One row of runs.csv (everything but the path order): config first, summary where the config is silent."""
    cfg = run.config
    ste, quant, opt = cfg.get("ste") or {}, cfg.get("quant") or {}, cfg.get("optimizer") or {}
    data = cfg.get("data") or {}
    row = {k: run[k] for k in ("run_name", "data", "model", "bits", "ste", "experiment", "tag", "seed")}
    row |= {
        k: run[k] for k in ("epochs", "max_epochs", "train_subset", "alpha_mode", *METRICS, "wall_time_s")
    }
    row |= {f"ste_{k}": ste.get(k) for k in ("eps", "beta", "delta")}
    row |= dict(zip(("wquant", "wbits"), run.weights, strict=True)) | {"wa": run.wa}
    row |= {"alpha": quant.get("alpha"), "init": "checkpoint" if run["init_checkpoint"] else "scratch"}
    row |= {"optimizer": _name(opt.get("_target_"))} | {
        k: opt.get(k) for k in ("lr", "momentum", "weight_decay")
    }
    row |= _scheduler(cfg.get("scheduler") or {})
    row |= {"batch_size": data.get("batch_size"), "val_subset": data.get("val_subset")}
    row["max_epochs"] = row["max_epochs"] or (cfg.get("trainer") or {}).get("max_epochs")
    commit = run.provenance.get("git_commit")
    return row | {"kind": run.kind, "status": run.status, "reason": run["reason"], "started": run.started,
                  "git_commit": commit, "init_checkpoint": run["init_checkpoint"]}  # fmt: skip


def run_table(runs: list[Run]) -> pd.DataFrame:
    """One row per run, in COLUMNS order; ``run`` (not written to runs.csv) holds the Run itself."""
    rows = [knobs(r) | {"path": str(r.path), "run": r} for r in runs]
    table = pd.DataFrame(rows, columns=[*COLUMNS, "run"])
    return table.astype({c: "Int64" for c in INTS})  # 2, not 2.0, beside nulls


def write_runs_csv(table: pd.DataFrame, path) -> None:
    """runs.csv: the table without the Run objects."""
    table[COLUMNS].to_csv(path, index=False)
