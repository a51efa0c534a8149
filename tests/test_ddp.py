"""trainer=ddp with 2 ranks on the CPU (gloo), as Lightning launches them on one node: one run dir whose run
files rank 0 alone writes, validation over the whole validation set on every rank's behalf, and a checkpoint
that one process evaluates and resumes; the same for data=imagefolder with ResNet-18."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from pytorch_lightning.utilities.rank_zero import rank_zero_only

from src.evaluate import evaluate
from src.rundir import atomic_write
from src.train import train
from tests.conftest import REPO
from tests.runs import data_overrides, make_cfg
from tests.test_imagefolder import SMALL, write_jpegs

ENV = os.environ | {"OMP_NUM_THREADS": "1"}
VAL = 100  # validation examples: 4 batches of 32, 32, 32, 4; a rank's half would give other metrics


def run_args(tmp_path: Path, epochs: int) -> list[str]:
    return [
        "model=tiny", *data_overrides("tiny", tmp_path / "data"), f"data.val_subset={VAL}", "data.train_subset=96",
        "logger=csv", f"trainer.max_epochs={epochs}", "trainer.limit_train_batches=2",
        "trainer.enable_progress_bar=false",
    ]  # fmt: skip


def train_cli(args: list[str]) -> subprocess.CompletedProcess:
    """``python -m src.train <args>`` from the repo root, one torch thread per rank."""
    return subprocess.run([sys.executable, "-m", "src.train", *args], cwd=REPO, env=ENV, capture_output=True,
                          text=True, timeout=600)  # fmt: skip


DDP_CPU = ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.sync_batchnorm=false"]


@pytest.mark.slow  # two ranks start torch and Lightning: ~45 s on the shared 2-core machine
def test_two_ranks_one_run_dir_whole_val_set_and_a_checkpoint_one_process_resumes(tmp_path):
    run_dir = tmp_path / "ddp"
    args = [*run_args(tmp_path, epochs=2), *DDP_CPU, f"hydra.run.dir={run_dir}"]
    out = train_cli(args)
    assert out.returncode == 0, out.stderr[-3000:]
    assert [p.name for p in tmp_path.iterdir() if p.name != "data"] == ["ddp"]  # one run dir, no second one
    # rank 1 writes only its own log (Lightning names its Hydra job train_ddp_process_1): no run file twice
    assert sorted(p.name for p in run_dir.iterdir()) == [
        ".hydra", "checkpoints", "config.yaml", "metrics.csv", "provenance.json", "summary.json", "train.log",
        "train_ddp_process_1.log",
    ]  # fmt: skip
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["last.ckpt"]
    assert len(json.loads((run_dir / "provenance.json").read_text())["starts"]) == 1
    rows = pd.read_csv(run_dir / "metrics.csv")
    assert rows["epoch"].tolist() == [0, 1, 2]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["epochs"] == 2

    # oracle: one process validating the same weights over all VAL examples
    one = evaluate(run_dir / "checkpoints" / "last.ckpt", accelerator="cpu")
    assert one["examples"] == VAL
    assert one["test_acc"] == pytest.approx(summary["val_acc"], abs=1e-4)
    assert one["test_loss"] == pytest.approx(summary["val_loss"], rel=1e-5)
    # and the starting point (seeded init, before any step) matches a one-process run's row 0
    single = train(make_cfg(tmp_path / "single", [*run_args(tmp_path, epochs=1), "trainer=cpu"]))
    row0 = pd.read_csv(tmp_path / "single" / "metrics.csv").iloc[0]
    assert rows.iloc[0]["val/acc"] == pytest.approx(row0["val/acc"], abs=1e-4)
    assert rows.iloc[0]["val/loss"] == pytest.approx(row0["val/loss"], rel=1e-5)
    assert single["status"] == "finished"

    # cut off after its last checkpoint (no summary yet): one process resumes it in place for a third epoch
    (run_dir / "summary.json").unlink()
    resumed = train(make_cfg(run_dir, [*run_args(tmp_path, epochs=3), "trainer=cpu", f"resume={run_dir}"]))
    assert resumed["status"] == "finished" and resumed["epochs"] == 3
    assert pd.read_csv(run_dir / "metrics.csv")["epoch"].tolist() == [0, 1, 2, 3]
    assert len(json.loads((run_dir / "provenance.json").read_text())["starts"]) == 2


def test_a_rank_other_than_0_writes_no_run_file(tmp_path, monkeypatch):
    monkeypatch.setattr(rank_zero_only, "rank", 1)
    atomic_write(tmp_path / "summary.json", b"{}")
    assert not list(tmp_path.iterdir())
    monkeypatch.setattr(rank_zero_only, "rank", 0)
    atomic_write(tmp_path / "summary.json", b"{}")
    assert (tmp_path / "summary.json").read_bytes() == b"{}"


@pytest.mark.slow  # two ranks of a ResNet-18 on 32x32 JPEGs: ~60 s on the shared 2-core machine
def test_imagefolder_resnet18_under_two_ranks_validates_every_image_once(tmp_path):
    """15 val images over 2 ranks (8 + 7, unpadded): the synced val metrics are one process's on all 15."""
    root = write_jpegs(tmp_path / "jpegs", train=8, val=5)
    run_dir = tmp_path / "ddp"
    args = [
        "experiment=resnet18_imagenet", f"data.root={root}", *SMALL, "data.num_workers=1", "logger=csv",
        "trainer.max_epochs=1", "trainer.limit_train_batches=1", "trainer.enable_progress_bar=false", *DDP_CPU,
        f"hydra.run.dir={run_dir}",
    ]  # fmt: skip
    out = train_cli(args)
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["model"] == "resnet18"
    one = evaluate(run_dir, accelerator="cpu")
    assert one["test_acc"] == pytest.approx(summary["val_acc"], abs=1e-4)
    assert one["test_loss"] == pytest.approx(summary["val_loss"], rel=1e-5)
