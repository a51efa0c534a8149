"""ImageNet-scale data: a folder of JPEGs per class read by DataLoader workers, never held in memory.

``<root>/train/<class>/*.JPEG`` and ``<root>/val/<class>/*.JPEG`` (torchvision ``ImageFolder``: ImageNet's usual
layout after the val images are sorted into class folders). ImageFolder over a sharded streaming format
(WebDataset, FFCV): it is the layout ImageNet users already have, needs no conversion step, and with enough
workers decodes faster than one GPU trains a 2-bit ResNet-18 (benchmarks/bench_loader.py); a streaming format
pays off on network file systems, which are out of this repo's reach.

Training: RandomResizedCrop + horizontal flip, validation: resize + center crop (the standard ImageNet transforms,
He et al. 2016), both normalised by the ImageNet mean/std. Under DDP each rank reads its own shard: a
DistributedSampler for training (reshuffled each epoch from seed + epoch, as in one process) and an unpadded
shard for validation, so that every validation image counts once (DistributedSampler would repeat some).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytorch_lightning as pl
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset
from torchvision import transforms
from torchvision.datasets import ImageFolder

from src.data.batches import check_positive, trainer_rank
from src.data.files import DataError

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class CorruptImage(DataError):
    """An image file PIL cannot decode: one line naming the file, raised at its first read.

    Chosen over skipping: a skipped image changes the dataset silently, and checking every file up front costs
    a full decoding pass of ImageNet before the first step. A DataLoader worker re-raises it in the main process
    as ``CorruptImage(<worker traceback>)``; the constructor keeps that traceback's last line, the message.
    """

    def __init__(self, message: str):
        last = message.strip().splitlines()[-1]
        super().__init__(last.split(f"{type(self).__name__}: ", 1)[-1])


def load_rgb(path: str) -> Image.Image:
    """ImageFolder's loader (PIL, RGB), with a damaged or non-image file named in one line."""
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (OSError, UnidentifiedImageError, SyntaxError) as err:
        raise CorruptImage(f"corrupt image {path}: {err}; replace or delete it") from None


class ValShard(DistributedSampler):
    """Every ``world``-th index from ``rank``, unpadded: together the ranks see each validation image once.

    A DistributedSampler subclass, so that Lightning keeps it instead of injecting its own padded one.
    """

    def __init__(self, dataset: Dataset, num_replicas: int, rank: int):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=False)
        self.indices = list(range(rank, len(dataset), num_replicas))

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


class ImageFolderDataModule(pl.LightningDataModule):
    """``<root>/train`` and ``<root>/val`` class folders; see the module docstring."""

    def __init__(
        self,
        root: str | Path,
        *,
        batch_size: int = 256,
        val_batch_size: int = 256,
        num_workers: int = 8,
        pin_memory: bool = True,
        image_size: int = 224,
        resize: int = 256,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        train_subset: int | None = None,
        val_subset: int | None = None,
        seed: int = 0,
    ):
        super().__init__()
        check_positive(batch_size=batch_size, val_batch_size=val_batch_size, image_size=image_size,
                       resize=resize, train_subset=train_subset, val_subset=val_subset)  # fmt: skip
        if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
            raise ValueError(f"data.num_workers must be an integer >= 0, got {num_workers!r}")
        if resize < image_size:
            raise ValueError(
                f"data.resize={resize} must be >= data.image_size={image_size} (the center crop)"
            )
        self.root, self.batch_size, self.val_batch_size = Path(root), batch_size, val_batch_size
        self.num_workers, self.pin_memory, self.seed = num_workers, pin_memory, seed
        self.image_size, self.train_subset, self.val_subset = image_size, train_subset, val_subset
        normalise = [transforms.ToTensor(), transforms.Normalize(mean, std)]
        self.train_transform = transforms.Compose(
            [transforms.RandomResizedCrop(image_size), transforms.RandomHorizontalFlip(), *normalise]
        )
        self.val_transform = transforms.Compose(
            [transforms.Resize(resize), transforms.CenterCrop(image_size), *normalise]
        )
        self.train_data: Dataset | None = None
        self.val_data: Dataset | None = None
        self.classes: list[str] = []

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (3, self.image_size, self.image_size)

    @property
    def num_classes(self) -> int:
        """The class folders in train/ (listed, not indexed, when asked before prepare_data: model checks)."""
        if self.classes or not (self.root / "train").is_dir():
            return len(self.classes)
        return sum(1 for p in (self.root / "train").iterdir() if p.is_dir())

    def prepare_data(self) -> None:
        """Index both folders (file names only, no decoding) and check them: present, >= 2 classes, images in
        each, the same classes in train and val. Every rank calls it (src.train), each for its own datasets."""
        if self.train_data is not None:
            return
        train = self._index("train", self.train_transform)
        val = self._index("val", self.val_transform)
        if val.classes != train.classes:
            extra = sorted(set(val.classes) ^ set(train.classes))
            raise DataError(
                f"{self.root}/val and {self.root}/train have different classes: {', '.join(extra[:5])}"
            )
        self.classes = train.classes
        self.train_data = self._cut(train, self.train_subset, "train_subset")
        self.val_data = self._cut(val, self.val_subset, "val_subset")

    def setup(self, stage: str | None = None) -> None:
        self.prepare_data()  # a rank that skipped prepare_data indexes its folders here

    def _index(self, split: str, transform) -> ImageFolder:
        folder = self.root / split
        if not folder.is_dir():
            raise DataError(
                f"data.root: no {split}/ folder in {self.root} (expected {folder}/<class>/<images>)"
            )
        try:
            data = ImageFolder(str(folder), transform=transform, loader=load_rgb)
        except FileNotFoundError as err:  # no class folder, or a class folder without images
            raise DataError(f"data.root: {folder}: {str(err).splitlines()[0]}") from None
        if len(data.classes) < 2:
            raise DataError(
                f"data.root: {folder} has {len(data.classes)} class folder; a classifier needs >= 2"
            )
        return data

    def _cut(self, data: ImageFolder, subset: int | None, name: str) -> Dataset:
        """``subset`` images spread evenly over the (class-sorted) folder, so every class keeps its share."""
        if subset is None:
            return data
        if subset > len(data):
            raise DataError(f"data.{name}={subset} exceeds the {len(data)} images in {data.root}")
        return Subset(data, [math.floor(i * len(data) / subset) for i in range(subset)])

    def _loader(self, data: Dataset, sampler, batch_size: int) -> DataLoader:
        return DataLoader(
            data, batch_size=batch_size, sampler=sampler, num_workers=self.num_workers,
            pin_memory=self.pin_memory and torch.cuda.is_available(), persistent_workers=self.num_workers > 0,
        )  # fmt: skip

    def train_dataloader(self) -> DataLoader:
        """Shuffled from (seed, epoch) on every rank; Lightning calls set_epoch each epoch (also after a resume)."""
        rank, world = trainer_rank(self)
        sampler = DistributedSampler(
            self.train_data, num_replicas=world, rank=rank, shuffle=True, seed=self.seed
        )
        return self._loader(self.train_data, sampler, self.batch_size)

    def val_dataloader(self) -> DataLoader:
        rank, world = trainer_rank(self)
        return self._loader(self.val_data, ValShard(self.val_data, world, rank), self.val_batch_size)

    test_dataloader = val_dataloader
