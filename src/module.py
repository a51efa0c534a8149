"""The one LightningModule: any model, any STE. Loss, metrics, optimizer and schedule come from the config."""

from __future__ import annotations

import time

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.lr_scheduler import ConstantLR, SequentialLR
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from src.theory import population_loss

LOSSES = {
    "cross_entropy": F.cross_entropy,
    "half_mse": lambda out, y: 0.5 * F.mse_loss(out, y),  # the two-layer model's ℓ = ½(ŷ − y)², eq. (1)
}


class STEModule(pl.LightningModule):
    """Trains ``model`` with ``optimizer``/``scheduler`` partials (from conf/optimizer, conf/scheduler).

    Logs the train loss as an epoch mean (the paper's Table 1 reports it), val loss/accuracy, the epoch time,
    and, for the two-layer model, the exact population loss of Lemma 1. A non-finite train loss stops the run
    and marks it ``diverged`` (the report shows it as such).
    """

    def __init__(
        self, model: nn.Module, optimizer, scheduler=None, num_classes: int | None = 10, config=None
    ):
        super().__init__()
        self.save_hyperparameters(ignore=["model", "optimizer", "scheduler"])  # the run's config rides along
        self.model, self.optimizer_factory, self.scheduler_factory = model, optimizer, scheduler
        self.loss_fn = LOSSES[getattr(model, "loss", "cross_entropy")]
        self.train_loss, self.val_loss = MeanMetric(), MeanMetric()
        self.val_acc = MulticlassAccuracy(num_classes) if num_classes else None
        self.diverged = False

    def forward(self, x):
        return self.model(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = self.loss_fn(self(x), y)
        self.train_loss.update(loss, weight=len(y))
        return loss

    def on_train_epoch_start(self):
        self._epoch_start = time.perf_counter()

    def on_train_epoch_end(self):
        loss = self.train_loss.compute()
        self.train_loss.reset()
        self.log_dict({"train/loss": loss, "time/epoch_s": time.perf_counter() - self._epoch_start})
        if not torch.isfinite(loss):
            self.diverged = self.trainer.should_stop = True

    def validation_step(self, batch, batch_idx):
        x, y = batch
        out = self(x)
        self.val_loss.update(self.loss_fn(out, y), weight=len(y))
        if self.val_acc is not None:
            self.val_acc.update(out, y)

    def on_validation_epoch_end(self):
        metrics = {"val/loss": self.val_loss.compute()}
        self.val_loss.reset()
        if self.val_acc is not None:
            metrics["val/acc"] = self.val_acc.compute() * 100  # percent, as the paper reports it
            self.val_acc.reset()
        teacher = getattr(self.trainer.datamodule, "v_star", None)
        if teacher is not None:
            metrics["val/population_loss"] = self.population_loss()
        self.log_dict(metrics)

    def population_loss(self) -> float:
        """f(v, w) of Lemma 1 for the two-layer model against the data's teacher."""
        dm, double = self.trainer.datamodule, lambda t: t.detach().double().cpu()
        return population_loss(
            double(self.model.v), double(self.model.w), double(dm.v_star), double(dm.w_star)
        )

    def configure_optimizers(self):
        optimizer = self.optimizer_factory(params=self.parameters())
        if self.scheduler_factory is None:
            return optimizer
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": self.scheduler_factory(optimizer=optimizer)},
        }


def hold_then(optimizer, hold_epochs: int, hold_factor: float, then):
    """lr × hold_factor for hold_epochs, then the ``then`` scheduler (a partial) counted from the switch (Figure 2)."""
    hold = ConstantLR(optimizer, factor=hold_factor, total_iters=hold_epochs)
    return SequentialLR(optimizer, [hold, then(optimizer=optimizer)], milestones=[hold_epochs])
