"""Data layer: MNIST / CIFAR-10 as in-memory tensors with batched augmentation, and the two-layer teacher data;
ImageNet-scale class folders read by DataLoader workers (folder.py)."""

from src.data.folder import ImageFolderDataModule
from src.data.gaussian import GaussianDataModule
from src.data.images import CIFAR10DataModule, ImageDataModule, MNISTDataModule

__all__ = [
    "CIFAR10DataModule",
    "GaussianDataModule",
    "ImageDataModule",
    "ImageFolderDataModule",
    "MNISTDataModule",
]
