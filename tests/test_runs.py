"""What a run records and how it survives faults: top-1 accuracy, one metrics row per epoch, the best epoch,
a kill mid-run then the same command (resume in place), a full disk during a save, divergence on the val loss
alone, a sweep with one bad job, and evaluating a checkpoint."""

import errno
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

import src.rundir
from src.data.batches import Batches
from src.data.images import ImageDataModule
from src.evaluate import evaluate
from src.module import STEModule
from src.rundir import SaveError
from src.train import train
from tests.conftest import REPO
from tests.runs import FAST_TRAINER, data_overrides, fast_cfg


def test_val_acc_is_top1_on_an_imbalanced_set():
    """val/acc = 100 · mean(argmax = y), computed here independently; macro recall would differ on this set."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(500, 4, generator=gen)
    y = torch.cat(
        [torch.zeros(450, dtype=torch.long), torch.randint(1, 4, (50,), generator=gen)]
    )  # 90 % class 0
    model = torch.nn.Linear(4, 4)
    module = STEModule(model, optimizer=None, num_classes=4)
    trainer = pl.Trainer(
        logger=False, enable_progress_bar=False, enable_checkpointing=False, inference_mode=False
    )
    trainer.validate(module, DataLoader(TensorDataset(x, y), batch_size=64), verbose=False)
    with torch.no_grad():
        pred = model(x).argmax(1)
    top1 = 100 * (pred == y).double().mean().item()
    macro = 100 * torch.stack([(pred[y == c] == c).double().mean() for c in range(4)]).mean().item()
    assert abs(top1 - macro) > 1  # the set tells the two apart
    assert trainer.callback_metrics["val/acc"].item() == pytest.approx(top1, abs=1e-4)


def test_metrics_csv_has_one_row_per_epoch_and_the_best_epoch(tmp_path):
    cfg = fast_cfg(tmp_path, "tiny", "trainer.max_epochs=3", "trainer.limit_train_batches=4")
    summary = train(cfg)
    df = pd.read_csv(Path(cfg.paths.output_dir) / "metrics.csv")
    assert df["epoch"].tolist() == [0, 1, 2, 3]  # 0 = the starting point, validated before training
    assert df["train/loss"].isna().tolist() == [True, False, False, False]
    assert {"val/loss", "val/acc", "val/acc_best", "lr", "time/epoch_s"} <= set(df.columns)
    best = df[df.epoch > 0]["val/acc"]
    assert summary["val_acc_best"] == pytest.approx(best.max()) and summary["best_epoch"] == best.idxmax()
    assert summary["val_acc"] == pytest.approx(df["val/acc"].iloc[-1]) and summary["status"] == "finished"


def test_learned_alpha_is_logged_per_layer(tmp_path):
    cfg = fast_cfg(tmp_path, "tiny", "quant=pact")
    train(cfg)
    df = pd.read_csv(Path(cfg.paths.output_dir) / "metrics.csv")
    assert [c for c in df.columns if c.startswith("alpha/")] == ["alpha/2"]  # tiny: conv, BN, act (index 2)


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "src.train", *args]


def tiny_run_args(tmp_path: Path, epochs: int) -> list[str]:
    return [
        "model=tiny", *data_overrides("tiny", tmp_path / "data"), *FAST_TRAINER, "logger=csv",
        f"trainer.max_epochs={epochs}", "trainer.limit_train_batches=6", "data.train_subset=96",
    ]  # fmt: skip


ENV = os.environ | {"OMP_NUM_THREADS": "1"}


def run_cli(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(cli(*args), cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_sigkill_mid_run_then_the_same_command_resumes_in_place(tmp_path):
    """A multirun killed after its 2nd epoch's checkpoint; the same command again resumes that run dir from the
    checkpoint and ends with the metrics of an uninterrupted run (deterministic CPU)."""
    args = ["-m", *tiny_run_args(tmp_path, epochs=5), "hydra.sweep.subdir=${run_name}"]
    whole = run_cli([*args, f"hydra.sweep.dir={tmp_path / 'whole'}"])
    assert whole.returncode == 0, whole.stderr[-2000:]
    cut = [*args, f"hydra.sweep.dir={tmp_path / 'cut'}"]
    proc = subprocess.Popen(cli(*cut), cwd=REPO, env=ENV, stderr=subprocess.DEVNULL)
    run_dir = tmp_path / "cut" / "tiny-cifar10-clipped_relu-2bit-s0"
    deadline = time.time() + 120
    while time.time() < deadline and not _has_epoch(run_dir / "metrics.csv", 3):
        time.sleep(0.05)
    proc.send_signal(
        signal.SIGKILL
    )  # mid-epoch 4 at the latest: the epoch-3 checkpoint is on disk or being written
    proc.wait()
    assert not (run_dir / "summary.json").exists() and (run_dir / "checkpoints" / "last.ckpt").is_file()
    again = run_cli(cut)
    assert again.returncode == 0, again.stderr[-2000:]
    a = json.loads((tmp_path / "whole" / run_dir.name / "summary.json").read_text())
    b = json.loads((run_dir / "summary.json").read_text())
    for key in ("train_loss", "val_loss", "val_acc", "val_acc_best", "best_epoch", "epochs"):
        assert a[key] == b[key], key
    rows = pd.read_csv(run_dir / "metrics.csv")
    assert rows["epoch"].tolist() == [0, 1, 2, 3, 4, 5]  # appended: no epoch twice, none missing
    # every column but the clock's, the diagnostics' diag/ and disagree/ included (the probe is checkpointed)
    whole_rows = pd.read_csv(tmp_path / "whole" / run_dir.name / "metrics.csv")
    columns = [c for c in whole_rows.columns if not c.startswith("time/")]
    assert any(c.startswith("disagree/") for c in columns) and set(rows.columns) == set(whole_rows.columns)
    pd.testing.assert_frame_equal(rows[columns], whole_rows[columns], check_exact=True)
    assert len(json.loads((run_dir / "provenance.json").read_text())["starts"]) == 2
    assert not list(run_dir.rglob(".*.tmp"))


def _has_epoch(path: Path, epoch: int) -> bool:
    try:
        return epoch in pd.read_csv(path)["epoch"].tolist()
    except (OSError, ValueError, KeyError):
        return False


def test_full_disk_during_a_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    """ENOSPC while writing the 2nd epoch's checkpoint: one SaveError, the 1st epoch's checkpoint intact."""
    cfg = fast_cfg(tmp_path, "tiny", "trainer.max_epochs=3")
    ckpt = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    real_fsync, calls = os.fsync, []

    def fsync(fd):
        calls.append(os.readlink(f"/proc/self/fd/{fd}"))
        if ckpt.is_file() and calls[-1].endswith(".last.ckpt.tmp"):
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(src.rundir.os, "fsync", fsync)
    with pytest.raises(SaveError, match="No space left on device; the previous version is intact"):
        train(cfg)
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert state["epoch"] == 0  # saved at the end of the first epoch, untouched by the failed second save
    assert not list(ckpt.parent.glob(".*.tmp"))


def test_divergence_on_the_val_loss_alone_stops_with_a_reason(tmp_path, monkeypatch):
    """NaN validation inputs: the train loss stays finite, the val loss does not → diverged, with why."""
    val = ImageDataModule.val_dataloader

    def huge(self):
        batches = val(self)
        return Batches(lambda epoch: ((x * math.nan, y) for x, y in batches), len(batches), lambda: 0)

    monkeypatch.setattr(ImageDataModule, "val_dataloader", huge)
    summary = train(fast_cfg(tmp_path, "tiny", "trainer.max_epochs=3"))
    assert summary["status"] == "diverged" and summary["train_loss"] is not None
    assert summary["reason"] == "val/loss = nan at epoch 1"
    assert summary["epochs"] == 1


@pytest.mark.slow
def test_a_sweep_with_one_bad_job_runs_the_others_and_fails_at_the_end(tmp_path):
    sweep = tmp_path / "sweep"
    out = run_cli(["-m", *tiny_run_args(tmp_path, epochs=1), "quant.bits=17,2", f"hydra.sweep.dir={sweep}"])
    assert out.returncode != 0
    status = {p.parent.name: json.loads(p.read_text()) for p in sweep.glob("*/summary.json")}
    assert status["1_tiny-cifar10-clipped_relu-2bit-s0"]["status"] == "finished"
    bad = status["0_tiny-cifar10-clipped_relu-17bit-s0"]
    assert bad["status"] == "failed" and bad["reason"] == "error: bits must be an integer in [1, 16], got 17"
    assert (
        out.stderr.strip().splitlines()[-1]
        == "error: 1 of 2 jobs failed: 0_tiny-cifar10-clipped_relu-17bit-s0"
    )


@pytest.mark.slow
def test_a_rejected_single_run_leaves_no_run_dir(tmp_path):
    run = tmp_path / "run"
    out = run_cli([*tiny_run_args(tmp_path, epochs=1), "quant.bits=17", f"hydra.run.dir={run}"])
    assert out.stderr.strip().splitlines()[-1] == "error: bits must be an integer in [1, 16], got 17"
    assert out.returncode != 0 and not run.exists()


def test_evaluate_reproduces_the_final_val_accuracy_and_loads_from_the_path_alone(tmp_path):
    cfg = fast_cfg(tmp_path, "tiny", "trainer.max_epochs=2", "trainer.limit_val_batches=null")
    summary = train(cfg)
    run_dir = Path(cfg.paths.output_dir)
    module = STEModule.load_from_checkpoint(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert module.model[2].bits == 2  # the model was rebuilt from the checkpoint's own config
    result = evaluate(run_dir, accelerator="cpu")
    assert result["test_acc"] == pytest.approx(summary["val_acc"], abs=1e-4)
    assert result["test_loss"] == pytest.approx(summary["val_loss"], rel=1e-5)
    fewer = evaluate(run_dir, ["data.val_subset=16"], accelerator="cpu")
    assert fewer["examples"] == 16


@pytest.mark.slow
def test_an_output_dir_that_cannot_be_made_is_one_line(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")  # a file where the run dir's parent should be
    out = run_cli([*tiny_run_args(tmp_path, epochs=1), f"hydra.run.dir={blocker / 'run'}"])
    assert out.returncode != 0 and "Traceback" not in out.stderr
    assert (
        out.stderr.strip().splitlines()[-1]
        == f"error: cannot create the output dir {blocker / 'run'}: Not a directory"
    )


@pytest.mark.slow  # two joblib worker processes start torch and Lightning: ~45 s
def test_two_runs_share_the_machine_through_the_joblib_launcher(tmp_path):
    """The documented many-runs configuration: joblib jobs side by side, each held to its slice of threads (3:
    no default of this 2-core machine or of OMP_NUM_THREADS=1)."""
    sweep = tmp_path / "sweep"
    args = [
        "-m",
        *tiny_run_args(tmp_path, epochs=1),
        "seed=0,1",
        "share.threads=3",
        f"hydra.sweep.dir={sweep}",
    ]
    out = run_cli([*args, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2"])
    assert out.returncode == 0, out.stderr[-2000:]
    runs = sorted(sweep.glob("*/summary.json"))
    assert [json.loads(p.read_text())["status"] for p in runs] == ["finished", "finished"]
    threads = [
        json.loads((p.parent / "provenance.json").read_text())["hardware"]["torch_threads"] for p in runs
    ]
    assert threads == [3, 3]
