"""data=imagefolder with model=resnet18 on a folder of JPEGs this test writes: FP ResNet-18 from a torchvision
state dict is torchvision's ResNet-18, the W2A2 experiment runs end to end (workers, one process), and the bad
folders are one line each."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
import torchvision
from PIL import Image
from torch.utils.data import DataLoader
from torchvision import transforms

from src.config import ConfigError
from src.data.folder import ImageFolderDataModule
from src.models_imagenet import from_torchvision
from src.train import train
from tests.runs import make_cfg

CLASSES = ("ant", "bee", "cat")
SMALL = ["data.image_size=32", "data.resize=36", "data.batch_size=8", "data.val_batch_size=8"]


def write_jpegs(root: Path, train: int = 8, val: int = 4, classes=CLASSES, seed: int = 0) -> Path:
    """<root>/{train,val}/<class>/*.JPEG: 40x48 RGB noise around a per-class colour (learnable, a few KB)."""
    rng = np.random.default_rng(seed)
    for split, count in (("train", train), ("val", val)):
        for c, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            colour = np.array([255 * (c == k % 3) for k in range(3)], dtype=float)
            for i in range(count):
                pixels = np.clip(colour * 0.6 + rng.normal(50, 40, (40, 48, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{name}_{i:03d}.JPEG", quality=90)
    return root


def run_cfg(tmp_path: Path, root: Path, *overrides: str, run: str = "run"):
    return make_cfg(
        tmp_path / run,
        [
            "experiment=resnet18_imagenet", f"data.root={root}", *SMALL, "data.num_workers=0",
            "trainer=cpu", "trainer.max_epochs=1", "trainer.limit_train_batches=2",
            "trainer.enable_progress_bar=false", "logger=csv", *overrides,
        ],
    )  # fmt: skip


def test_fp_resnet18_from_a_torchvision_state_dict_is_torchvision_resnet18(tmp_path):
    """With float activations and weights, the run's starting point (metrics.csv row 0) is the val loss and
    top-1 of torchvision's own resnet18 holding the same weights, on torchvision's own val transforms."""
    root = write_jpegs(tmp_path / "jpegs")
    torch.manual_seed(1)
    reference = torchvision.models.resnet18(num_classes=len(CLASSES)).eval()
    init = tmp_path / "fp_init.ckpt"
    torch.save(from_torchvision(reference.state_dict()), init)  # what `python -m src.models_imagenet` writes
    cfg = run_cfg(
        tmp_path,
        root,
        "quant=fp",
        "quant.bits=null",
        "wquant=fp",
        "wquant.bits=null",
        f"init.checkpoint={init}",
    )
    train(cfg)
    row0 = pd.read_csv(tmp_path / "run" / "metrics.csv").iloc[0]

    tf = transforms.Compose([transforms.Resize(36), transforms.CenterCrop(32), transforms.ToTensor(),
                             transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])  # fmt: skip
    val = torchvision.datasets.ImageFolder(str(root / "val"), transform=tf)
    x, y = next(iter(DataLoader(val, batch_size=len(val))))
    with torch.no_grad():
        logits = reference(x)
    assert row0["val/loss"] == pytest.approx(F.cross_entropy(logits, y).item(), rel=1e-4)
    assert row0["val/acc"] == pytest.approx(100 * (logits.argmax(1) == y).double().mean().item(), abs=1e-4)


@pytest.mark.slow
def test_the_w2a2_experiment_runs_end_to_end_with_loader_workers(tmp_path):
    root = write_jpegs(tmp_path / "jpegs")
    summary = train(run_cfg(tmp_path, root, "data.num_workers=1", "trainer.max_epochs=2"))
    assert summary["status"] == "finished" and summary["epochs"] == 2
    assert (summary["model"], summary["bits"], summary["weights"]) == ("resnet18", 2, "2")
    rows = pd.read_csv(tmp_path / "run" / "metrics.csv")
    assert rows["epoch"].tolist() == [0, 1, 2] and rows["train/loss"].notna().sum() == 2
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["status"] == "finished"


def test_subsets_keep_every_class_and_ddp_val_shards_cover_the_val_set_once(tmp_path):
    root = write_jpegs(tmp_path / "jpegs", train=8, val=5)
    dm = ImageFolderDataModule(root, train_subset=6, image_size=32, resize=36, num_workers=0)
    dm.prepare_data()
    assert dm.num_classes == 3 and sorted(dm.train_data.dataset.targets[i] for i in dm.train_data.indices) == [
        0, 0, 1, 1, 2, 2,
    ]  # fmt: skip
    from src.data.folder import ValShard

    shards = [list(ValShard(dm.val_data, 2, rank)) for rank in range(2)]
    assert sorted(shards[0] + shards[1]) == list(range(15)) and [len(s) for s in shards] == [8, 7]


def corrupt(root: Path) -> str:
    bad = root / "train" / "bee" / "bee_000.JPEG"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    return str(bad)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda r: r, "data.root: no train/ folder in {r} (expected {r}/train/<class>/<images>)"),
        (lambda r: (r / "train").mkdir(parents=True) or (r / "val").mkdir() or r, "data.root: {r}/train: "),
        (
            lambda r: write_jpegs(r, classes=("ant",)),
            "data.root: {r}/train has 1 class folder; a classifier needs >= 2",
        ),
    ],
    ids=["missing", "empty", "one-class"],
)
def test_bad_folders_are_one_line(tmp_path, make, message):
    root = tmp_path / "jpegs"
    root = make(root)
    with pytest.raises(ConfigError) as err:
        train(run_cfg(tmp_path, root))
    text = str(err.value)
    assert "\n" not in text and text.startswith(message.format(r=root))
    assert not (tmp_path / "run" / "summary.json").exists()


@pytest.mark.slow
@pytest.mark.parametrize("workers", [0, 1])
def test_a_corrupt_image_is_one_line_naming_it(tmp_path, workers):
    root = write_jpegs(tmp_path / "jpegs")
    bad = corrupt(root)
    with pytest.raises(ConfigError) as err:
        train(run_cfg(tmp_path, root, f"data.num_workers={workers}", "trainer.limit_train_batches=null"))
    text = str(err.value)
    assert "\n" not in text and text.startswith(f"corrupt image {bad}: ")
