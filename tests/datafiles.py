"""Tiny MNIST / CIFAR-10 datasets in the genuine on-disk formats, for tests (no download, learnable labels).

Each class has its own bright block at a class-specific place (and, for CIFAR, a class colour) on top of
noise, so a small net learns them in a few steps. Labels cycle through the classes in a shuffled order.
"""

import gzip
import pickle
from pathlib import Path

import numpy as np

MNIST_RAW = ("MNIST", "raw")
CIFAR_FOLDER = "cifar-10-batches-py"
CIFAR_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def learnable_images(labels: np.ndarray, channels: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """uint8 images (N,C,size,size): noise plus a class-dependent bright block (coloured per class)."""
    images = rng.integers(0, 64, (len(labels), channels, size, size), dtype=np.uint8)
    block = size // 4
    for label in range(10):
        row, col = divmod(label, 4)  # a 3x4 grid of block positions, one per class
        colour = 255 - 20 * ((label + np.arange(channels)) % 3)  # (C,) differs per class when C = 3
        top, left = block // 2 + row * block, col * block
        chosen = labels == label
        images[chosen, :, top : top + block, left : left + block] = colour[:, None, None]
    return images


def _split_labels(count: int, rng: np.random.Generator) -> np.ndarray:
    """`count` labels, every class equally often (up to one), in a random order."""
    return rng.permutation(np.arange(count) % 10).astype(np.uint8)


def _write_idx_gz(path: Path, array: np.ndarray) -> None:
    """A gzipped IDX file: magic 0x0000_08_<ndim> (uint8), big-endian int32 dims, then the raw bytes."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes()))


def write_mnist(root: str | Path, n_train: int = 256, n_test: int = 128, seed: int = 0) -> Path:
    """Write the four MNIST IDX .gz files under root/MNIST/raw/ with their original names; returns that dir."""
    rng = np.random.default_rng(seed)
    raw = Path(root).joinpath(*MNIST_RAW)
    raw.mkdir(parents=True, exist_ok=True)
    for prefix, count in (("train", n_train), ("t10k", n_test)):
        labels = _split_labels(count, rng)
        images = learnable_images(labels, 1, 28, rng)[:, 0]  # (N,28,28): IDX images have no channel axis
        _write_idx_gz(raw / f"{prefix}-images-idx3-ubyte.gz", images)
        _write_idx_gz(raw / f"{prefix}-labels-idx1-ubyte.gz", labels)
    return raw


def _dump(obj: dict, path: Path) -> None:
    # Protocol 2 with str keys: what torchvision sees when it loads the original batches with latin1.
    with path.open("wb") as f:
        pickle.dump(obj, f, protocol=2)


def write_cifar10(root: str | Path, n_train: int = 256, n_test: int = 128, seed: int = 0) -> Path:
    """Write data_batch_1..5, test_batch and batches.meta under root/cifar-10-batches-py/; returns that dir."""
    rng = np.random.default_rng(seed)
    folder = Path(root) / CIFAR_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    train_parts = np.array_split(np.arange(n_train), 5)  # five training batches, in order
    names = [f"data_batch_{i + 1}" for i in range(5)] + ["test_batch"]
    counts = [len(part) for part in train_parts] + [n_test]
    for i, (name, count) in enumerate(zip(names, counts, strict=True)):
        labels = _split_labels(count, rng)
        data = learnable_images(labels, 3, 32, rng).reshape(count, -1)  # (N,3072): CHW planes per row
        label = "testing batch 1 of 1" if name == "test_batch" else f"training batch {i + 1} of 5"
        files = [f"{name}_{j:05d}.png" for j in range(count)]
        _dump(
            {"batch_label": label, "labels": labels.tolist(), "data": data, "filenames": files}, folder / name
        )
    meta = {"num_cases_per_batch": max(counts), "label_names": CIFAR_CLASSES, "num_vis": 3072}
    _dump(meta, folder / "batches.meta")
    return folder
