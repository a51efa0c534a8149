"""The progress bar of a run: Lightning's TQDM bar, its epochs counted as the log and metrics.csv count them."""

from __future__ import annotations

from pytorch_lightning.callbacks import TQDMProgressBar


class EpochBar(TQDMProgressBar):
    """Shows ``Epoch k/N`` with k from 1, as the log's "epoch k/N" line and metrics.csv's ``epoch`` (epochs
    completed after it) say: Lightning's own bar counts from 0, so its "Epoch 1" was the log's "epoch 2/2"."""

    def on_train_epoch_start(self, trainer, *args) -> None:
        super().on_train_epoch_start(trainer, *args)
        self.train_progress_bar.set_description(f"Epoch {trainer.current_epoch + 1}/{trainer.max_epochs}")
