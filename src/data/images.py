"""MNIST and CIFAR-10 datamodules: each split held whole as uint8 tensors, batches made by tensor ops."""

import math
from collections.abc import Iterator, Sequence
from functools import partial, partialmethod
from pathlib import Path
from typing import ClassVar

import pytorch_lightning as pl
import torch

from src.data.batches import (
    TRAIN,
    Batches,
    check_positive,
    crop_flip,
    crop_flip_draws,
    generator,
    normalise,
    shard_indices,
    trainer_epoch,
    trainer_rank,
)
from src.data.files import (
    CIFAR10_FILES,
    MNIST_FILES,
    DataError,
    DatasetFiles,
    ensure_present,
    load_split,
    verify_md5,
)

Split = tuple[torch.Tensor, torch.Tensor]  # images uint8 (N,C,H,W), labels int64 (N,)


def check_normalisation(mean, std, channels: int, name: str) -> None:
    """data.mean and data.std: one finite number per channel of the images, std > 0."""
    for key, values in (("mean", mean), ("std", std)):
        ok = isinstance(values, Sequence) and not isinstance(values, str) and len(values) == channels
        ok = ok and all(
            isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in values
        )
        if not ok or (key == "std" and min(values) <= 0):
            need = f"{channels} finite number{'s' * (channels > 1)}" + (" > 0" if key == "std" else "")
            raise ValueError(f"data.{key} needs {need}, one per channel of {name}'s images, got {values!r}")


class ImageDataModule(pl.LightningDataModule):
    """An image dataset in memory; train = shuffled (and augmented) batches, val = the official test split, or
    with ``holdout`` = N the training split's last N examples (which then leave training: tuning must not
    select on the test set)."""

    files: ClassVar[DatasetFiles]
    num_classes: ClassVar[int] = 10

    def __init__(
        self,
        root: str | Path = "data",
        *,  # the per-dataset defaults below come from each subclass's partialmethod
        batch_size: int,
        augment: bool,
        mean: Sequence[float],
        std: Sequence[float],
        crop_padding: int,
        hflip: bool,
        val_batch_size: int = 1000,
        download: bool = True,
        verify_checksums: bool = True,
        on_device: bool = False,
        train_subset: int | None = None,
        val_subset: int | None = None,
        seed: int = 0,
        holdout: int = 0,
    ):
        super().__init__()
        check_positive(
            batch_size=batch_size,
            val_batch_size=val_batch_size,
            train_subset=train_subset,
            val_subset=val_subset,
        )
        check_normalisation(mean, std, channels=self.files.shape[0], name=self.files.name)
        if isinstance(holdout, bool) or not isinstance(holdout, int) or holdout < 0:
            raise ValueError(f"data.holdout must be an integer >= 0, got {holdout!r}")
        if isinstance(crop_padding, bool) or not isinstance(crop_padding, int) or crop_padding < 0:
            raise ValueError(f"data.crop_padding must be an integer >= 0 (pixels), got {crop_padding!r}")
        for key, flag in (("augment", augment), ("hflip", hflip), ("download", download),
                          ("verify_checksums", verify_checksums), ("on_device", on_device)):  # fmt: skip
            if not isinstance(flag, bool):
                raise ValueError(f"data.{key} must be true or false, got {flag!r}")
        self.root, self.batch_size, self.val_batch_size = root, batch_size, val_batch_size
        self.download, self.verify_checksums, self.on_device = download, verify_checksums, on_device
        self.augment, self.crop_padding, self.hflip = augment, crop_padding, hflip
        self.train_subset, self.val_subset, self.seed = train_subset, val_subset, seed
        self.holdout = holdout
        self.mean, self.std = tuple(mean), tuple(std)
        self.train_data: Split | None = None
        self.val_data: Split | None = None
        self._read: tuple[Split, Split] | None = None  # read and checked by prepare_data, on the CPU

    @property
    def input_shape(self) -> tuple[int, ...]:
        """One example's shape (C, H, W), which the models are built for."""
        return tuple(self.files.shape)

    def prepare_data(self) -> None:
        """Download missing files (when `download` is on), then read and check them all, so that a damaged
        file or a too-large subset fails here, before training; setup() reuses what was read."""
        ensure_present(self.files, self.root, self.download)
        if self._read is None and self.train_data is None:  # Lightning calls this again in validate and fit
            self._read = self._read_checked()

    def setup(self, stage: str | None = None, device: torch.device | None = None) -> None:
        """Move both splits (first `*_subset` examples of each) onto the chosen device, reading them if needed.
        With on_device, that is the attached trainer's device, or ``device`` (src/stacked has no trainer)."""
        if self.train_data is not None:
            return
        # a DDP rank other than 0, or a caller that skipped prepare_data(), reads the files itself
        train, val = self._read or self._read_checked()
        self._read = None  # the device copies below are the ones kept
        if self.on_device and self.trainer is not None:
            device = self.trainer.strategy.root_device  # batches are then made on the accelerator
        if not self.on_device or device is None:
            device = torch.device("cpu")
        self.train_data = tuple(t.to(device) for t in train)
        self.val_data = tuple(t.to(device) for t in val)
        shape = (1, -1, 1, 1)  # (1,C,1,1) broadcasts over (B,C,H,W)
        self._mean = torch.tensor(self.mean, device=device).view(shape)
        self._std = torch.tensor(self.std, device=device).view(shape)

    def share(self, other: "ImageDataModule") -> None:
        """Hold ``other``'s loaded splits instead of a copy (jobs of one stack: same files, subsets, holdout)."""
        self.train_data, self.val_data, self._read = other.train_data, other.val_data, None
        self._mean, self._std = other._mean, other._std

    def _read_checked(self) -> tuple[Split, Split]:
        """Both splits on the CPU, cut to their subsets. Checksums come first: a file is read only once it
        is known to be the published one (or the user opted out), and then only as data (BatchUnpickler)."""
        ensure_present(self.files, self.root, download=False)
        if self.verify_checksums:
            verify_md5(self.files, self.root)
        (train, val), (train_kind, val_kind) = self._splits()
        return (
            self._cut(train, train_kind, self.train_subset, "train_subset"),
            self._cut(val, val_kind, self.val_subset, "val_subset"),
        )

    def _splits(self) -> tuple[tuple[Split, Split], tuple[str, str]]:
        """(train, val) whole, and what each is called in errors. The holdout is the training file's last
        examples: the same split for every seed, trial and STE (MNIST's last 5,000 hold each class 9-11 %)."""
        train = load_split(self.files, self.root, "train")
        if not self.holdout:
            return (train, load_split(self.files, self.root, "test")), ("train examples", "test examples")
        count = len(train[1])
        if self.holdout >= count:
            where = self.files.directory(self.root)
            raise DataError(
                f"data.holdout={self.holdout} must be below the {count} train examples in {where}"
            )
        keep = count - self.holdout
        kept, held = tuple(t[:keep] for t in train), tuple(t[keep:] for t in train)
        return (kept, held), (f"train examples left after data.holdout={self.holdout}", "holdout examples")

    def _cut(self, split: Split, kind: str, subset: int | None, name: str) -> Split:
        """One split, cut to its first `subset` examples."""
        x, y = split
        if subset is not None and subset > len(y):
            where = self.files.directory(self.root)
            raise DataError(f"data.{name}={subset} exceeds the {len(y)} {kind} in {where}")
        return x[:subset], y[:subset]

    def _loaded(self) -> tuple[Split, Split]:
        if self.train_data is None or self.val_data is None:
            raise RuntimeError(
                f"{type(self).__name__}: call prepare_data() and setup() before the dataloaders"
            )
        return self.train_data, self.val_data

    def train_dataloader(self) -> Batches:
        """Shuffled batches, reordered each epoch from (seed, epoch); this rank's shard under DDP."""
        (_, y), _ = self._loaded()
        rank, world = trainer_rank(self)
        length = math.ceil(math.ceil(len(y) / world) / self.batch_size)
        make = partial(self._train_epoch, rank=rank, world=world)
        return Batches(make, length, partial(trainer_epoch, self))

    def _train_epoch(self, epoch: int, rank: int, world: int) -> Iterator[Split]:
        order, draws = self.epoch_draws(epoch, rank, world)
        for start in range(0, len(order), self.batch_size):
            part = slice(start, start + self.batch_size)
            yield self.batch(order[part], tuple(d[part] for d in draws))

    def epoch_draws(self, epoch: int, rank: int = 0, world: int = 1) -> tuple[torch.Tensor, tuple]:
        """The epoch's example order (N',) and augmentation draws ((top, left, flip), each (N',); () without
        augmentation), on the data's device: one copy per epoch, none per step. One CPU stream per (seed, epoch),
        drawn in this order: the permutation, then each batch's crop and flip in turn."""
        (x, y), _ = self._loaded()
        gen = generator(self.seed, TRAIN, epoch)
        order = shard_indices(torch.randperm(len(y), generator=gen), rank, world)  # (ceil(N/world),)
        batches = order.split(self.batch_size) if self.augment else ()
        per_batch = [crop_flip_draws(len(idx), self.crop_padding, self.hflip, gen) for idx in batches]
        draws = tuple(torch.cat(d).to(x.device) for d in zip(*per_batch, strict=True))
        return order.to(x.device), draws

    def batch(self, idx: torch.Tensor, draws: tuple) -> Split:
        """Examples ``idx`` (any shape S: (B,), or (K, B) for a stack) as normalised images (*S, C, H, W) and
        labels S, cropped and flipped by ``draws`` (each shaped S; () for none)."""
        (x, y), _ = self._loaded()
        images = x[idx.flatten()]  # (|S|, C, H, W) uint8
        if draws:
            images = crop_flip(images, *(d.flatten() for d in draws), self.crop_padding)
        return normalise(images, self._mean, self._std).view(*idx.shape, *images.shape[1:]), y[idx]

    def val_dataloader(self) -> Batches:
        """The validation split (official test split, or the holdout) in file order, normalised, never augmented."""
        _, (x, y) = self._loaded()
        size = self.val_batch_size

        def one_pass(_epoch: int) -> Iterator[Split]:
            for images, labels in zip(x.split(size), y.split(size), strict=True):
                yield normalise(images, self._mean, self._std), labels

        return Batches(one_pass, math.ceil(len(y) / size), lambda: 0)

    test_dataloader = val_dataloader  # the paper validates on the official test split: the same batches


class MNISTDataModule(ImageDataModule):
    """MNIST for LeNet-5: 60,000 train / 10,000 test grey 28x28 digits, read from the four IDX .gz files."""

    files = MNIST_FILES
    in_channels, image_size = MNIST_FILES.shape[0], MNIST_FILES.shape[-1]
    # no augmentation (the usual choice; the paper states none); a mirrored digit is another symbol: never flip
    __init__ = partialmethod(
        ImageDataModule.__init__,
        batch_size=64,
        augment=False,
        mean=(0.1307,),
        std=(0.3081,),
        crop_padding=2,
        hflip=False,
    )


class CIFAR10DataModule(ImageDataModule):
    """CIFAR-10 for VGG-11 / ResNet-20: 50,000 train / 10,000 test RGB 32x32 images, python pickle batches."""

    files = CIFAR10_FILES
    in_channels, image_size = CIFAR10_FILES.shape[0], CIFAR10_FILES.shape[-1]
    __init__ = (
        partialmethod(  # Yin et al. 2019, §4: crop 32 with 4-pixel padding, horizontal flip, these constants
            ImageDataModule.__init__,
            batch_size=128,
            augment=True,
            mean=(0.4914, 0.4822, 0.4465),
            std=(0.2023, 0.1994, 0.2010),
            crop_padding=4,
            hflip=True,
        )
    )
