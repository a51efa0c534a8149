"""What a run directory holds, written so that a kill at any instant loses at most the epoch in progress.

<run dir>/config.yaml, provenance.json (one entry per start), metrics.csv (one row per epoch, epoch 0 = the
starting point), checkpoints/last.ckpt (every ``every_n_epochs``), summary.json (status, final and best
metrics). Every file is replaced atomically: written beside its target, fsynced, then renamed over it.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import os
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Checkpoint
from pytorch_lightning.plugins.io import TorchCheckpointIO
from pytorch_lightning.utilities.rank_zero import rank_zero_only

log = logging.getLogger(__name__)


class SaveError(OSError):
    """A file of the run could not be written (disk full, permissions); the previous version is intact."""


def atomic_write(path: Path, data: bytes) -> None:
    """Replace ``path`` by ``data`` all at once: a crash or a full disk leaves the old file, never a truncated one.

    Under DDP only global rank 0 writes: every rank holds the same run record, and two writers would race.
    """
    if rank_zero_only.rank:  # set from RANK/LOCAL_RANK/SLURM_PROCID at import, then by Lightning's strategy
        return
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise SaveError(
            f"could not write {path}: {err.strerror or err}; the previous version is intact"
        ) from None


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's torch.save, made atomic (Lightning writes in place: a full disk leaves a truncated file)."""

    def save_checkpoint(self, checkpoint, path, storage_options=None):
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        atomic_write(Path(path), buffer.getvalue())


def read_rows(path: Path) -> list[dict]:
    """metrics.csv as a list of {column: float}; empty cells are left out."""
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        return [{k: float(v) for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(f)]


def write_rows(path: Path, rows: list[dict]) -> None:
    """metrics.csv: ``epoch`` first, then every metric any row has, in first-seen order."""
    columns = list(dict.fromkeys(k for row in rows for k in row))
    columns = ["epoch", "step"] + [c for c in columns if c not in ("epoch", "step")]
    text = io.StringIO()
    writer = csv.DictWriter(text, columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: _cell(v) for k, v in row.items()} for row in rows)
    atomic_write(path, text.getvalue().encode())


def _cell(v):
    return int(v) if float(v).is_integer() and abs(v) < 2**53 else v


class EpochCheckpoint(Checkpoint):
    """At every epoch end: the epoch's row in metrics.csv, then <dirpath>/last.ckpt (every ``every_n_epochs``
    and after the last epoch), through the trainer's checkpoint IO (AtomicCheckpointIO: never truncated).

    The row comes from ``trainer.callback_metrics`` (train, val, lr, time; ``epoch`` = epochs completed); the
    validation before training is row 0. On resume, rows past the checkpoint's epoch (written before a kill
    that came ahead of the checkpoint) are dropped, so the file never holds an epoch twice or skips one.
    Lightning runs Checkpoint callbacks after the LightningModule's epoch-end hook, so the row sees the
    epoch's train loss and the checkpoint a diverged run's stop.
    """

    def __init__(self, dirpath: str, metrics_file: str, every_n_epochs: int = 1):
        if not isinstance(every_n_epochs, int) or isinstance(every_n_epochs, bool) or every_n_epochs < 1:
            raise ValueError(
                f"callbacks.checkpoint.every_n_epochs must be an integer >= 1, got {every_n_epochs!r}"
            )
        self.path, self.metrics_file = Path(dirpath) / "last.ckpt", Path(metrics_file)
        self.every_n_epochs, self.rows = every_n_epochs, []

    def on_validation_end(self, trainer, pl_module):
        if trainer.state.fn == "validate":  # the starting point, validated before fit
            self.rows = [self._row(trainer, epoch=0)]
            write_rows(self.metrics_file, self.rows)

    def on_train_start(self, trainer, pl_module):
        """After a resume, keep the rows up to the restored epoch (rows 0 .. current_epoch)."""
        if not self.rows:
            self.rows = [r for r in read_rows(self.metrics_file) if r["epoch"] <= trainer.current_epoch]

    def on_train_epoch_end(self, trainer, pl_module):
        epoch = trainer.current_epoch + 1
        row = self._row(trainer, epoch)
        self.rows = [r for r in self.rows if r["epoch"] < epoch] + [row]
        write_rows(self.metrics_file, self.rows)
        # the log line leaves per-layer and per-step-length metrics (diag/<layer>/...) to metrics.csv
        brief = {k: v for k, v in row.items() if k not in ("epoch", "step") and k.count("/") < 2}
        log.info(
            "epoch %d/%d: %s",
            epoch,
            trainer.max_epochs,
            "  ".join(f"{k} {shown(k, v)}" for k, v in brief.items()),
        )
        if epoch % self.every_n_epochs == 0 or trainer.should_stop or epoch >= trainer.max_epochs:
            trainer.save_checkpoint(self.path, weights_only=False)  # full state: a resume continues it

    @staticmethod
    def _row(trainer: pl.Trainer, epoch: int) -> dict:
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if "/" in k or k == "lr"}
        return {"epoch": epoch, "step": trainer.global_step, **metrics}


def shown(key: str, value: float) -> str:
    """A metric as a log line shows it: accuracies in % with 2 decimals (val/acc 94.30), others 4 digits."""
    return f"{value:.2f}" if key.endswith(("/acc", "acc_best")) else f"{value:.4g}"


def finite(x) -> float | None:
    """A JSON-safe number: None for NaN/inf (json would write NaN, which strict readers reject)."""
    return float(x) if x is not None and math.isfinite(float(x)) else None
