"""Optuna's pruning of a tuning trial (src.tune): the Lightning callback that reports each epoch's holdout top-1
to the study and stops the run when the MedianPruner says so, and the pruned run's summary.json."""

from __future__ import annotations

import math
from pathlib import Path

import optuna
import pytorch_lightning as pl
from optuna.pruners import MedianPruner

from src.runs import write_json

STUDY = "tune"  # the study's name inside study.db
PRUNED = "pruned"  # summary.json status of a trial run the pruner stopped (not run again, like DONE)


def mark_pruned(run_dir: Path, summary: dict, pruned: dict) -> dict:
    """The trial run's summary.json with status ``pruned`` and why (the epoch and score the pruner stopped at)."""
    reason = (
        f"pruned by MedianPruner after epoch {pruned['epoch']}: holdout top-1 {pruned['value']:.2f} % below "
        "the median of the earlier trials at that epoch"
    )
    summary = summary | {"status": PRUNED, "reason": reason}
    write_json(run_dir / "summary.json", summary)
    return summary


class Pruning(pl.Callback):
    """Optuna pruning of one trial run: after each epoch's validation it reports the holdout top-1 (``monitor``) to
    trial ``number`` of the study in ``storage``; when the study's MedianPruner (``pruner``: its arguments) says
    so, it marks the trial (user attr ``pruned``: epoch and value) and stops the fit. Built from the run's config
    (trial_config adds it), so src.train needs no Optuna; a kill loses nothing, the study.db has it all."""

    def __init__(self, storage: str, number: int, pruner: dict | None = None, monitor: str = "val/acc"):
        self.storage, self.number, self.pruner, self.monitor = storage, number, dict(pruner or {}), monitor
        self._trial: optuna.Trial | None = None

    def trial(self) -> optuna.Trial:
        """The study's trial ``number``, loaded once, with the study's pruner."""
        if self._trial is None:
            study = optuna.load_study(
                study_name=STUDY, storage=self.storage, pruner=MedianPruner(**self.pruner)
            )
            frozen = next(t for t in study.get_trials(deepcopy=False) if t.number == self.number)
            self._trial = optuna.Trial(study, frozen._trial_id)  # ask-and-tell's trial, by its storage id
        return self._trial

    def on_validation_end(self, trainer, pl_module):
        value = trainer.callback_metrics.get(self.monitor)
        if trainer.sanity_checking or trainer.state.fn != "fit" or value is None or not math.isfinite(value):
            return  # the start point's validation (before fit) is no epoch of training; a diverged run stops itself
        epoch, trial = trainer.current_epoch + 1, self.trial()
        trial.report(float(value), epoch)
        if trial.should_prune():
            trial.set_user_attr(PRUNED, {"epoch": epoch, "value": float(value)})
            trainer.should_stop = True
