"""Cost of the Diagnostics callback (src/diagnostics.py): epoch time of a Lightning fit with and without it.

    python benchmarks/bench_diagnostics.py [--models lenet5,tiny] [--rounds 3] [--every-n-steps 20]
        [--disagree-every 1] [--train-subset N]

LeNet-5 trains on MNIST (../shared/data when present, else random MNIST-shaped batches of the same count), the
tiny test model on random CIFAR-shaped batches; 2-bit clipped ReLU STE, SGD, batch 64 (LeNet-5, Table 2) or 128.
Each round fits a fresh copy of the same model for 2 epochs without, then with, the callback and times the second
epoch (the first warms up); the table gives the median over rounds, the ratio, and the seconds spent inside the
callback's own code (its hooks, level counts, ∂loss/∂x norms and the epoch-end probes) as a share of the epoch.
"""

from __future__ import annotations

import argparse
import copy
import logging
import statistics
import sys
import time
import warnings
from functools import partial
from pathlib import Path

import pytorch_lightning as pl
import torch

from src.data import MNISTDataModule
from src.data.batches import Batches
from src.diagnostics import Diagnostics
from src.models import build_model
from src.module import STEModule
from src.provenance import cpu_name
from src.quant import QuantReLU

sys.path.insert(0, str(Path(__file__).parent))
from bench_train import EpochTimer  # noqa: E402 - the epoch timer of the training benchmark

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


class TimedDiagnostics(Diagnostics):
    """Diagnostics that adds up the seconds spent in its own hooks during the current epoch."""

    def on_fit_start(self, trainer, pl_module):
        super().on_fit_start(trainer, pl_module)
        for stats in self.layers.values():  # instance attributes shadow the methods the hooks call
            stats.forward_hook, stats.grad_hook = (
                self._timed(stats.forward_hook),
                self._timed(stats.grad_hook),
            )
        for name in ("on_train_batch_start", "on_train_batch_end", "on_train_epoch_end"):
            setattr(self, name, self._timed(getattr(self, name)))

    def on_train_epoch_start(self, trainer, pl_module):
        self.seconds = 0.0

    def _timed(self, fn):
        def run(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - start

        return run


def mnist_loader(train_subset: int | None):
    """The MNIST training loader from ../shared/data, or None when it is absent."""
    if not SHARED.is_dir():
        return None
    dm = MNISTDataModule(SHARED, download=False, verify_checksums=False, train_subset=train_subset)
    dm.prepare_data()
    dm.setup("fit")
    return dm.train_dataloader()


def random_loader(in_shape, batch: int, steps: int):
    gen = torch.Generator().manual_seed(0)
    batches = [
        (torch.randn(batch, *in_shape, generator=gen), torch.randint(0, 10, (batch,), generator=gen))
        for _ in range(steps)
    ]
    return Batches(lambda epoch: iter(batches), len(batches), lambda: None)


def fit_seconds(model, loader, diagnostics: TimedDiagnostics | None) -> tuple[float, float]:
    """(seconds of the second epoch, seconds of it inside the callback) of a 2-epoch fit without validation."""
    timer = EpochTimer()  # after the callback: its epoch-end probes count in the epoch
    module = STEModule(model, partial(torch.optim.SGD, lr=0.01, momentum=0.9), num_classes=10)
    trainer = pl.Trainer(
        accelerator="cpu", max_epochs=2, callbacks=[c for c in (diagnostics, timer) if c], logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
    )  # fmt: skip
    trainer.fit(module, train_dataloaders=loader)
    return timer.seconds, diagnostics.seconds if diagnostics else 0.0


def bench(name: str, args) -> None:
    if name == "lenet5":
        in_shape, loader = (1, 28, 28), mnist_loader(args.train_subset)
        data = "MNIST" if loader else "random MNIST-shaped"
        loader = loader or random_loader(in_shape, 64, (args.train_subset or 60000) // 64)
    else:
        in_shape, data = (3, 32, 32), "random CIFAR-shaped"
        loader = random_loader(in_shape, 128, args.tiny_steps)
    torch.manual_seed(0)
    model = build_model(name, partial(QuantReLU, 2, "lloyd", "clipped_relu"), in_shape)
    knobs = {"every_n_steps": args.every_n_steps, "disagree_every_n_epochs": args.disagree_every}
    off, on, inside = [], [], []
    for _ in range(args.rounds):
        off.append(fit_seconds(copy.deepcopy(model), loader, None)[0])
        epoch, callback = fit_seconds(copy.deepcopy(model), loader, TimedDiagnostics(**knobs))
        on.append(epoch), inside.append(callback)
    off_s, on_s, in_s = (statistics.median(t) for t in (off, on, inside))
    print(f"{name:<8}{data:<22}{len(loader):>8}{off_s:>10.3f}{on_s:>10.3f}{on_s / off_s:>8.3f}"
          f"{in_s:>12.3f}{100 * in_s / on_s:>9.2f}%")  # fmt: skip


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", type=lambda s: s.split(","), default=["lenet5", "tiny"])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--every-n-steps", type=int, default=20)
    parser.add_argument(
        "--disagree-every", type=int, default=1, help="epochs between disagreement probes; 0 off"
    )
    parser.add_argument(
        "--train-subset", type=int, default=None, help="MNIST examples per epoch (default all)"
    )
    parser.add_argument("--tiny-steps", type=int, default=400, help="batches per epoch of the tiny model")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    print(f"# {cpu_name()} ({torch.get_num_threads()} CPU threads); torch {torch.__version__}, "
          f"Lightning {pl.__version__}; every_n_steps {args.every_n_steps}, disagreement every "
          f"{args.disagree_every} epoch(s); median of {args.rounds} rounds")  # fmt: skip
    print(
        f"{'model':<8}{'data':<22}{'steps':>8}{'off s':>10}{'on s':>10}{'ratio':>8}{'callback s':>12}{'share':>10}"
    )
    for name in args.models:
        bench(name, args)


if __name__ == "__main__":
    main()
