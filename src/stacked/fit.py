"""Train K built runs as one stacked model; each stays an ordinary run with its own files.

Each slice is a run built by src.train.build (its seed's weights, its datamodule, its STEModule with its own
optimizer and schedule). The K models' tensors become views of one stacked model (src/stack.py): one vmapped
forward and backward per step for all K, then each slice's own optimizer steps its own parameters. The
STEModule's own epoch hooks (lr, train loss mean, best val top-1, divergence) run per slice against a
``SliceTrainer`` (what they read of a Lightning Trainer), so metrics.csv, checkpoints/last.ckpt and summary.json
hold what the run alone would write, through the same writers. A slice that diverges stops alone.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from types import SimpleNamespace

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig

from src.config import check_checkpoint
from src.data.batches import stack_draws
from src.module import STEModule
from src.rundir import AtomicCheckpointIO, EpochCheckpoint, read_rows, write_rows
from src.stack import StackedModels
from src.stacked.ste import add_bounds, stack_base

log = logging.getLogger(__name__)


class SliceTrainer:
    """What STEModule's epoch hooks, EpochCheckpoint._row and src.train.write_summary read of a Trainer, for one
    slice; ``log_dict`` stands in for the module's (Lightning's own needs a running Trainer)."""

    fast_dev_run = False
    sanity_checking = False

    def __init__(self, datamodule, max_epochs: int, val_batches: int):
        self.datamodule, self.max_epochs, self.num_val_batches = datamodule, max_epochs, [val_batches]
        self.callback_metrics: dict[str, torch.Tensor] = {}
        self.current_epoch = self.global_step = 0
        self.should_stop = False
        self.state = SimpleNamespace(fn="validate")
        self.optimizers: list = []

    def log_dict(self, metrics: dict, **_) -> None:
        # as Lightning logs them: a number becomes a float32 tensor, a tensor keeps its dtype
        for key, value in metrics.items():
            self.callback_metrics[key] = torch.as_tensor(value).detach().cpu()


@dataclass
class Slice:
    """One job of the stack: its config, run dir, datamodule, module, optimizer, schedule and metrics rows."""

    cfg: DictConfig
    run_dir: Path
    datamodule: pl.LightningDataModule
    module: STEModule
    resume: str | None
    trainer: SliceTrainer | None = None
    optimizer: torch.optim.Optimizer | None = None
    scheduler: object = None
    rows: list = field(default_factory=list)
    start_epoch: int = 0
    summary: dict | None = None  # summary.json once the slice has ended


def limited(n: int, limit) -> int:
    """Batches per pass under trainer.limit_*_batches as Lightning counts them (None: all, int: at most, float:
    that fraction)."""
    if limit is None:
        return n
    return min(n, limit) if isinstance(limit, int) else int(n * limit)


def share_data(slices: list[Slice], device: torch.device) -> None:
    """One copy of the data for the whole stack (its jobs share the data config but the seed), on ``device``
    with data.on_device: batches are then gathered there, with no host copy per step."""
    first = slices[0].datamodule
    first.setup("fit", device=device)
    for s in slices[1:]:
        s.datamodule.share(first)


def prepare(s: Slice, device: torch.device, precision, fixed_alpha: bool) -> None:
    """Ready one built slice (its data shared by ``share_data``): STE bounds, device and dtype, optimizer and
    schedule, and the state of a cut-off earlier start (its checkpoint, as Lightning would restore it)."""
    trainer_cfg = s.cfg.trainer
    val_batches = limited(len(s.datamodule.val_dataloader()), trainer_cfg.limit_val_batches)
    s.trainer = SliceTrainer(s.datamodule, trainer_cfg.max_epochs, val_batches)
    s.module.trainer = s.trainer  # current_epoch, check_divergence and _eval_metrics read it
    s.module.log_dict = s.trainer.log_dict
    if fixed_alpha:
        add_bounds(s.module.model, s.cfg.ste.name)
    precision.convert_module(
        s.module.to(device)
    )  # Lightning's own: 64-true doubles the model, not its metrics
    found = s.module.configure_optimizers()
    s.optimizer = found["optimizer"] if isinstance(found, dict) else found
    s.scheduler = found["lr_scheduler"]["scheduler"] if isinstance(found, dict) else None
    s.trainer.optimizers = [s.optimizer]
    if s.resume:
        restore(s)


def restore(s: Slice) -> None:
    """Continue from the slice's last.ckpt (an ordinary checkpoint): weights, optimizer, schedule, best, epoch."""
    ckpt = check_checkpoint(s.resume, "resume")
    s.module.load_state_dict(ckpt["state_dict"])
    s.optimizer.load_state_dict(ckpt["optimizer_states"][0])
    if s.scheduler is not None:
        s.scheduler.load_state_dict(ckpt["lr_schedulers"][0])
    s.module.on_load_checkpoint(ckpt)
    s.start_epoch = s.trainer.current_epoch = (
        int(ckpt["epoch"]) + 1
    )  # saved at the end of epoch index `epoch`
    s.trainer.global_step = int(ckpt["global_step"])
    s.rows = [r for r in read_rows(s.run_dir / "metrics.csv") if r["epoch"] <= s.start_epoch]


def stack(slices: list[Slice], fixed_alpha: bool) -> StackedModels:
    """One stacked model over the slices' models, which become views of it."""
    models = [s.module.model for s in slices]
    stacked = StackedModels(models, stack_base(models[0], fixed_alpha))
    stacked.bind(models)
    return stacked


def train_epoch(
    stacked: StackedModels, slices: list[Slice], epoch: int, batches: int, device, precision
) -> None:
    """One epoch of every slice, each on the batches it would see alone (its datamodule's (seed, epoch) order)."""
    stacked.train()
    models, data = [s.module.model for s in slices], slices[0].datamodule
    # each slice's own epoch draws (its datamodule's seed), as a Lightning run gets them for this epoch
    order, aug = stack_draws([s.datamodule.epoch_draws(epoch) for s in slices])  # (K, N) each
    size = data.batch_size
    for b in range(batches):
        part = slice(b * size, (b + 1) * size)
        x, y = data.batch(order[:, part], tuple(a[:, part] for a in aug))  # (K, B, C, H, W), (K, B)
        x, y = precision.convert_input(x.to(device)), y.to(device)
        for s in slices:
            s.optimizer.zero_grad()
        with precision.forward_context():  # as Lightning runs a training_step (64-true, autocast)
            out = stacked(x)  # (K, B, classes)
            losses = [s.module.loss_fn(o, t) for s, o, t in zip(slices, out, y, strict=True)]
        sum(losses).backward()  # slice k's gradient is that of its own loss
        stacked.copy_grads(models)
        for s, loss, t in zip(slices, losses, y, strict=True):
            s.optimizer.step()
            s.module.train_loss.update(loss.detach().expand(len(t)))
            s.trainer.global_step += 1


def validate(stacked: StackedModels, slices: list[Slice], device, precision) -> None:
    """Every slice on the val batches (the same for all: they share the data config), then its val metrics."""
    stacked.eval()
    batches = islice(slices[0].datamodule.val_dataloader(), slices[0].trainer.num_val_batches[0])
    with torch.no_grad():
        for x, y in batches:
            x, y = precision.convert_input(x.to(device)), y.to(device)
            with precision.forward_context():
                out = stacked(x.expand(len(slices), *x.shape))  # (K, B, classes); expand: no copy
                losses = [s.module.loss_fn(o, y) for s, o in zip(slices, out, strict=True)]
            for s, o, loss in zip(slices, out, losses, strict=True):
                s.module.val_loss.update(loss.expand(len(y)))
                s.module.val_acc.update(o, y)
    for s in slices:
        s.module.on_validation_epoch_end()


def end_epoch(s: Slice, epoch: int) -> bool:
    """The slice's epoch end as Lightning orders it (schedule, module hook, metrics row, checkpoint); True if
    the slice stops here (diverged)."""
    if s.scheduler is not None:
        s.scheduler.step()
    s.module.on_train_epoch_end()  # train/loss, lr, time/epoch_s, learned α; divergence
    s.rows = [r for r in s.rows if r["epoch"] < epoch + 1] + [EpochCheckpoint._row(s.trainer, epoch + 1)]
    write_rows(s.run_dir / "metrics.csv", s.rows)
    every = s.cfg.callbacks.checkpoint.every_n_epochs
    if (epoch + 1) % every == 0 or s.trainer.should_stop or epoch + 1 >= s.trainer.max_epochs:
        save_checkpoint(s, epoch)
    return s.trainer.should_stop


def fit(slices: list[Slice], device: torch.device, precision, fixed_alpha: bool, on_stop) -> None:
    """Train the prepared slices (all at the same start epoch) to max_epochs; ``on_stop(slice)`` when one ends."""
    active, first = list(slices), slices[0]
    stacked = stack(active, fixed_alpha)
    if first.start_epoch == 0:  # the starting point's val metrics: metrics.csv row 0
        validate(stacked, slices, device, precision)
        for s in slices:
            s.rows = [EpochCheckpoint._row(s.trainer, 0)]
            write_rows(s.run_dir / "metrics.csv", s.rows)
    batches = limited(len(first.datamodule.train_dataloader()), first.cfg.trainer.limit_train_batches)
    for epoch in range(first.start_epoch, first.trainer.max_epochs):
        for s in active:
            s.trainer.current_epoch, s.trainer.state.fn = epoch, "fit"
            s.module.on_train_epoch_start()
        started = time.perf_counter()
        train_epoch(stacked, active, epoch, batches, device, precision)
        validate(stacked, active, device, precision)
        stopped = [s for s in active if end_epoch(s, epoch)]
        log.info("stack of %d, epoch %d/%d: %.1f s", len(active), epoch + 1, first.trainer.max_epochs,
                 time.perf_counter() - started)  # fmt: skip
        for s in stopped:
            s.trainer.current_epoch = epoch + 1
            on_stop(s)
        active = [s for s in active if s not in stopped]
        if not active:
            return
        if stopped:  # the others go on in a smaller stack (their optimizers keep their state: same tensors)
            stacked = stack(active, fixed_alpha)
    for s in active:
        s.trainer.current_epoch = s.trainer.max_epochs
        on_stop(s)


def save_checkpoint(s: Slice, epoch: int) -> None:
    """checkpoints/last.ckpt of the slice in the ordinary format: what Lightning writes for the run alone at the
    end of epoch index ``epoch`` (src.evaluate, src.export and ``resume=`` read it as any run's)."""
    trainer = s.trainer
    ckpt = {
        "epoch": epoch,
        "global_step": trainer.global_step,
        "pytorch-lightning_version": pl.__version__,
        # clone: a slice is a view, and torch.save writes a view's whole storage (all K runs)
        "state_dict": {k: v.detach().clone() for k, v in s.module.state_dict().items()},
        "loops": loops(
            epoch + 1, trainer.global_step // (epoch + 1), trainer.num_val_batches[0], s.start_epoch == 0
        ),
        "callbacks": {},
        "optimizer_states": [s.optimizer.state_dict()],
        "lr_schedulers": [] if s.scheduler is None else [s.scheduler.state_dict()],
        "hparams_name": "kwargs",
        "hyper_parameters": dict(s.module.hparams),
    }
    s.module.on_save_checkpoint(ckpt)  # best val top-1 and wall time, as for any run
    AtomicCheckpointIO().save_checkpoint(ckpt, s.run_dir / "checkpoints" / "last.ckpt")


def _progress(n: int, total: int, *stages: str) -> dict:
    return {"current": dict.fromkeys(stages, n), "total": dict.fromkeys(stages, total)}


def batch(n: int, total: int, last: bool) -> dict:
    return _progress(n, total, "ready", "completed", "started", "processed") | {"is_last_batch": last}


def loops(epochs: int, batches: int, val_batches: int, validated: bool) -> dict:
    """Lightning 2.x's loop counters after ``epochs`` epochs of ``batches`` steps, saved at the last epoch's end
    (epoch progress: processed, not yet completed), so a resume starts the next epoch as for the run alone;
    ``validated``: this start ran the validation before training (a fresh run, not a resumed one).
    tests/test_stack_launcher.py compares them with a Lightning run's own."""
    steps = epochs * batches
    epoch_progress = _progress(epochs, epochs, "ready", "started", "processed")
    for part in ("current", "total"):
        epoch_progress[part]["completed"] = epochs - 1
    step = _progress(batches, steps, "ready", "completed")
    zero_grad = _progress(batches, steps, "ready", "completed", "started")
    fit_loop = {
        "state_dict": {},
        "epoch_loop.state_dict": {"_batches_that_stepped": steps},
        "epoch_loop.batch_progress": batch(batches, steps, True),
        "epoch_loop.scheduler_progress": _progress(1, epochs, "ready", "completed"),
        "epoch_loop.automatic_optimization.state_dict": {},
        "epoch_loop.automatic_optimization.optim_progress": {
            "optimizer": {"step": step, "zero_grad": zero_grad}
        },
        "epoch_loop.manual_optimization.state_dict": {},
        "epoch_loop.manual_optimization.optim_step_progress": _progress(0, 0, "ready", "completed"),
        "epoch_loop.val_loop.state_dict": {},
        "epoch_loop.val_loop.batch_progress": batch(val_batches, val_batches, True),
        "epoch_progress": epoch_progress,
    }
    idle = {"state_dict": {}, "batch_progress": batch(0, 0, False)}
    return {
        "fit_loop": fit_loop,
        "validate_loop": {
            "state_dict": {},
            "batch_progress": batch(*(2 * [val_batches if validated else 0]), validated),
        },
        "test_loop": idle,
        "predict_loop": {
            "state_dict": {},
            "batch_progress": _progress(0, 0, "ready", "completed", "started", "processed"),
        },
    }
