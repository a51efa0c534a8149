"""The one LightningModule: any model, any STE. Loss, metrics, optimizer and schedule come from the config."""

from __future__ import annotations

import math
import time

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from torch import nn
from torch.optim.lr_scheduler import ConstantLR, SequentialLR
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from src.plugins import load_plugins
from src.quant import QuantReLU, set_epoch
from src.theory import population_loss

LOSSES = {
    "cross_entropy": F.cross_entropy,
    "half_mse": lambda out, y: 0.5 * F.mse_loss(out, y),  # the two-layer model's ℓ = ½(ŷ − y)², eq. (1)
}


class STEModule(pl.LightningModule):
    """Trains ``model`` with ``optimizer``/``scheduler`` partials (from conf/optimizer, conf/scheduler).

    Logs per epoch the train loss as an epoch mean (the paper's Table 1 reports it), the lr of the epoch, val
    loss and top-1 accuracy with the best so far, the epoch time, every learned α, and for the two-layer model
    the exact population loss of Lemma 1. A train or val loss that is not finite or exceeds ``max_loss`` stops
    the run as diverged, with the metric, value and epoch in ``diverged_reason``.

    ``STEModule.load_from_checkpoint(path)`` needs nothing else: with ``model=None`` the model, optimizer and
    schedule are rebuilt from ``config`` (the run's resolved config, saved in the checkpoint's hyper-parameters).
    """

    def __init__(
        self,
        model: nn.Module | None = None,
        optimizer=None,
        scheduler=None,
        num_classes: int | None = 10,
        config: dict | None = None,
        in_shape: tuple[int, ...] | None = None,
        max_loss: float = math.inf,
    ):
        super().__init__()
        # the run's config rides along in the checkpoint; W&B gets the flat config from src.train instead
        self.save_hyperparameters(ignore=["model", "optimizer", "scheduler"], logger=False)
        if model is None:
            model, optimizer, scheduler = build_from_config(config, in_shape, num_classes)
        self.model, self.optimizer_factory, self.scheduler_factory = model, optimizer, scheduler
        self.loss_fn = LOSSES[getattr(model, "loss", "cross_entropy")]
        # nan_strategy "disable": a NaN loss reaches the epoch mean (and stops the run as diverged) instead of
        # being dropped, and no per-step isnan().any() forces a device sync. ("disable" also drops `weight`,
        # so each example enters as one value: the batch mean expanded to (B,).)
        self.train_loss, self.val_loss = (MeanMetric(nan_strategy="disable") for _ in range(2))
        # top-1 (micro): the fraction of examples right; torchmetrics' default "macro" averages per-class recall
        self.val_acc = MulticlassAccuracy(num_classes, average="micro") if num_classes else None
        self.best = {"val/acc_best": -math.inf, "val/acc_best_epoch": 0}
        self.wall_before = 0.0  # seconds trained by earlier starts of this run (restored from the checkpoint)
        self._started = time.perf_counter()
        self.diverged_reason: str | None = None

    @property
    def diverged(self) -> bool:
        return self.diverged_reason is not None

    def forward(self, x):
        return self.model(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = self.loss_fn(self(x), y)
        self.train_loss.update(loss.detach().expand(len(y)))  # (B,): the mean over examples
        bar = self.trainer.progress_bar_callback
        # the bar's loss only when the bar redraws: self.log costs ~0.3 ms, 4 % of a LeNet-5 step on a 2-core CPU
        if bar is not None and batch_idx % max(getattr(bar, "refresh_rate", 1), 1) == 0:
            self.log(
                "loss", loss, prog_bar=True, logger=False
            )  # the bar only; metrics.csv has the epoch mean
        return loss

    def on_train_epoch_start(self):
        self._epoch_start = time.perf_counter()
        set_epoch(self.model, self.current_epoch, self.trainer.max_epochs)  # annealed STEs follow the epoch
        self._lr = self.trainer.optimizers[0].param_groups[0]["lr"]  # the lr this epoch trains with

    def on_train_epoch_end(self):
        loss = self.train_loss.compute()
        self.train_loss.reset()
        metrics = {
            "train/loss": loss,
            "lr": self._lr,
            "time/epoch_s": time.perf_counter() - self._epoch_start,
        }
        self.log_epoch(metrics | self.learned_alphas(), self.current_epoch + 1)
        self.check_divergence()

    def log_epoch(self, metrics: dict, epoch: int) -> None:
        """log_dict with ``epoch`` = epochs trained, metrics.csv's axis (0 = the start): without it Lightning gives
        every logger (W&B) the 0-based index of the epoch in progress, one behind metrics.csv."""
        self.log_dict(metrics | {"epoch": float(epoch)})

    def check_divergence(self) -> None:
        """Stop as diverged at the first train or val loss that is not finite or exceeds max_loss."""
        epoch = self.current_epoch + 1
        for key in ("train/loss", "val/loss"):
            value = self.trainer.callback_metrics.get(key)
            if value is not None and not (torch.isfinite(value) and value <= self.hparams.max_loss):
                self.diverged_reason = f"{key} = {float(value):.4g} at epoch {epoch}"
                self.trainer.should_stop = True
                return

    def learned_alphas(self) -> dict[str, float]:
        """α of every activation that learns it (pact/lsq), as alpha/<layer>."""
        return {
            f"alpha/{name.removeprefix('model.')}": m.alpha.item()
            for name, m in self.named_modules()
            if isinstance(m, QuantReLU) and m.bits is not None and m.alpha_mode != "fixed"
        }

    def validation_step(self, batch, batch_idx):
        self._eval_step(batch)

    def test_step(self, batch, batch_idx):
        self._eval_step(batch)

    def _eval_step(self, batch):
        x, y = batch
        out = self(x)
        self.val_loss.update(self.loss_fn(out, y).expand(len(y)))
        if self.val_acc is not None:
            self.val_acc.update(out, y)

    def on_validation_epoch_end(self):
        metrics = self._eval_metrics("val")
        if "val/acc" in metrics and not self.trainer.sanity_checking and self.trainer.state.fn == "fit":
            # the best trained epoch, not the start; an epoch whose loss is not finite (a diverged run's last) never
            if metrics["val/acc"] > self.best["val/acc_best"] and torch.isfinite(metrics["val/loss"]):
                self.best = {
                    "val/acc_best": float(metrics["val/acc"]),
                    "val/acc_best_epoch": self.current_epoch + 1,
                }
            metrics |= self.best
        # epochs trained: validate() before fit scores the start, epoch 0
        epoch = self.current_epoch + (self.trainer.state.fn == "fit")
        self.log_epoch(metrics, epoch)

    def on_test_epoch_end(self):
        self.log_dict(self._eval_metrics("test"))

    def _eval_metrics(self, split: str) -> dict:
        metrics = {f"{split}/loss": self.val_loss.compute()}
        self.val_loss.reset()
        if self.val_acc is not None:
            metrics[f"{split}/acc"] = self.val_acc.compute() * 100  # percent, as the paper reports it
            self.val_acc.reset()
        teacher = getattr(self.trainer.datamodule, "v_star", None)
        if teacher is not None:
            metrics[f"{split}/population_loss"] = self.population_loss()
        return metrics

    def population_loss(self) -> float:
        """f(v, w) of Lemma 1 for the two-layer model against the data's teacher."""
        dm, double = self.trainer.datamodule, lambda t: t.detach().double().cpu()
        return population_loss(
            double(self.model.v), double(self.model.w), double(dm.v_star), double(dm.w_star)
        )

    @property
    def wall_time(self) -> float:
        """Seconds of this run over all its starts, up to the last checkpoint of each earlier one."""
        return self.wall_before + time.perf_counter() - self._started

    def on_save_checkpoint(self, checkpoint):
        checkpoint["best"], checkpoint["wall_time_s"] = self.best, self.wall_time  # what a resume continues

    def on_load_checkpoint(self, checkpoint):
        self.best = checkpoint.get("best", self.best)
        self.wall_before = checkpoint.get("wall_time_s", 0.0)

    def configure_optimizers(self):
        optimizer = self.optimizer_factory(params=self.parameters())
        if self.scheduler_factory is None:
            return optimizer
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": self.scheduler_factory(optimizer=optimizer)},
        }


def build_from_config(config: dict, in_shape, num_classes):
    """Model, optimizer and scheduler partials from a run's resolved config (config.yaml, a checkpoint's hparams)."""
    if config is None or in_shape is None:
        raise ValueError("STEModule needs a model, or the run config and input shape to rebuild it from")
    load_plugins(config.get("plugins"))  # a run whose STE or model came from a plugin
    act = instantiate(config["quant"])
    # runs from before conf/wquant have float weights
    wquant = instantiate(config["wquant"]) if "wquant" in config else None
    model = instantiate(config["model"], act=act, wquant=wquant, in_shape=in_shape, num_classes=num_classes)
    return model, instantiate(config["optimizer"]), instantiate(config["scheduler"])


def hold_then(optimizer, hold_epochs: int, hold_factor: float, then):
    """lr × hold_factor for hold_epochs, then the ``then`` scheduler (a partial) counted from the switch (Figure 2)."""
    hold = ConstantLR(optimizer, factor=hold_factor, total_iters=hold_epochs)
    return SequentialLR(optimizer, [hold, then(optimizer=optimizer)], milestones=[hold_epochs])
