"""Is a data=imagefolder run bound by data or by compute? Images/s of the training input pipeline (JPEG decode,
RandomResizedCrop 224, flip, normalise: src/data/folder.py) with 0, 1, 2 DataLoader workers, beside the images/s
of a W2A2 ResNet-18 train step (forward, backward, SGD step) on this machine.

    python benchmarks/bench_loader.py                       # writes ImageNet-sized JPEGs to a temp dir first
    python benchmarks/bench_loader.py --root /data/imagenet --images 2000 --out docs/results/bench/loader_cpu.txt

The loader reaches ``workers × (images/s of one)`` until the cores run out; the run is data-bound when the
loader's rate for the workers you can give it is below the step's.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from src.data.folder import ImageFolderDataModule
from src.models import build_model
from src.provenance import cpu_name
from src.quant import QuantReLU
from src.quant.weights import weight_quantizer


def write_images(root: Path, count: int, classes: int = 4, seed: int = 0) -> Path:
    """``count`` JPEGs per split of ImageNet's typical size (500×375, quality 90, ~110 KB) in ``classes`` folders."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, (375, 500, 3), dtype=np.uint8)  # smooth-ish content compresses like photos
    for split in ("train", "val"):
        for i in range(count):
            folder = root / split / f"c{i % classes}"
            folder.mkdir(parents=True, exist_ok=True)
            noise = rng.integers(-20, 20, base.shape)
            img = np.clip(np.roll(base, i, axis=1).astype(int) + noise, 0, 255).astype(np.uint8)
            Image.fromarray(img).resize((500, 375)).save(folder / f"{i:05d}.JPEG", quality=90)
    return root


def loader_rate(root: Path, workers: int, batch: int, images: int) -> float:
    """Training images/s over the second pass of ``images`` images (the first starts the persistent workers
    and reads the files into the page cache); the second pass is timed from iter() to its last batch. One
    torch thread, as in each worker: with 0 workers and 2 threads on busy cores, the intra-op barriers of the
    per-image Normalize dominate (5 vs 43 images/s measured under load)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    dm = ImageFolderDataModule(
        root, batch_size=batch, num_workers=workers, pin_memory=False, train_subset=images
    )
    dm.prepare_data()
    loader = dm.train_dataloader()
    for _ in loader:
        pass
    start = time.perf_counter()
    seen = sum(len(x) for x, _ in loader)
    rate = seen / (time.perf_counter() - start)
    torch.set_num_threads(threads)
    return rate


def step_rate(batch: int, steps: int, bits: int = 2) -> float:
    """W2A2 ResNet-18 (224×224, 1000 classes) train steps, images/s after one warm-up step."""
    act = partial(QuantReLU, bits=bits, alpha="lloyd", alpha_mode="lsq")
    model = build_model("resnet18", act=act, in_shape=(3, 224, 224), num_classes=1000,
                        wquant=weight_quantizer(name="uniform", bits=bits, scale="lloyd"))  # fmt: skip
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x, y = torch.randn(batch, 3, 224, 224), torch.randint(0, 1000, (batch,))

    def step():
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()

    step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return batch * steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--root", type=Path, help="an imagefolder root (train/<class>/...); default: generated"
    )
    parser.add_argument("--images", type=int, default=256, help="training images per loader measurement")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=3, help="timed ResNet-18 train steps")
    parser.add_argument("--out", type=Path, help="also write the table here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = args.root or write_images(Path(tmp), args.images)
        rows = [(f"loader, {w} worker{'s' * (w != 1)}", loader_rate(root, w, args.batch, args.images))
                for w in args.workers]  # fmt: skip
    rows.append((f"W2A2 ResNet-18 train step, batch {args.batch}", step_rate(args.batch, args.steps)))
    lines = [
        f"# python benchmarks/bench_loader.py {' '.join(f'--{k} {v}' for k, v in vars(args).items() if v and k != 'out')}",
        f"# {cpu_name()}, loader 1 torch thread, step {torch.get_num_threads()} torch threads, torch {torch.__version__}, {platform.platform()}",
        f"# load average at the end: {os.getloadavg()[0]:.1f} (other processes share these cores)",
        "| pipeline | images/s |",
        "|---|---:|",
        *(f"| {name} | {rate:.1f} |" for name, rate in rows),
    ]
    text = "\n".join(lines) + "\n"
    print(text, end="")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)


if __name__ == "__main__":
    main()
