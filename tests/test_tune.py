"""Per-STE tuning (src/tune.py) and its data: a 3-trial Optuna search on the tiny model offline, resuming an
interrupted study, the holdout split (sizes, disjoint from training, deterministic, one-line errors) and the
mnist_tune profile's tune / tuned stages."""

import json
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import torch
import yaml

import src.data.images as images
import src.reproduce as reproduce
import src.tune
from src.config import ConfigError, validate
from src.data.files import DataError
from src.data.images import MNISTDataModule
from src.tune import tune
from tests.conftest import REPO
from tests.datafiles import write_mnist
from tests.runs import FAST, data_overrides, fast_cfg, make_cfg

# lr spans three decades so that the trials' accuracies differ; three random (startup) trials, seeded
SPACE = {
    "n_trials": 3,
    "sampler_seed": 0,
    "n_startup_trials": 3,
    "params": {
        "optimizer.lr": {"low": 1e-3, "high": 1.0, "log": True},
        "optimizer.weight_decay": {"low": 1e-6, "high": 1e-3, "log": True},
    },
}


def tiny_overrides(tmp_path: Path, *extra: str) -> list[str]:
    """The tiny model on fake CIFAR-10 (256 train images), 4 steps per trial, validated on the last 64."""
    data = data_overrides("tiny", tmp_path / "data")
    return ["model=tiny", *data, *FAST, "trainer.limit_train_batches=4", "data.holdout=64", *extra]


def on_disk(out: Path, record: dict) -> list[dict]:
    """Each trial's run files, read independently of tuning.json: summary.json and config.yaml."""
    runs = []
    for trial in record["trials"]:
        run = out / trial["run_dir"]
        summary = json.loads((run / "summary.json").read_text())
        runs.append(summary | {"config": yaml.safe_load((run / "config.yaml").read_text())})
    return runs


def test_three_trial_search_returns_the_best_trial(tmp_path):
    out = tmp_path / "study"
    record = tune(out, tiny_overrides(tmp_path), SPACE)
    runs = on_disk(out, record)
    assert [t["number"] for t in record["trials"]] == [0, 1, 2] and record["complete"]
    assert [t["state"] for t in record["trials"]] == ["COMPLETE"] * 3
    values = [run["val_acc_best"] for run in runs]
    assert len(set(values)) > 1  # the trials differ, so picking the best one is a real choice
    best = values.index(max(values))
    assert record["best"]["number"] == best and record["best"]["value"] == max(values)
    for trial, run in zip(record["trials"], runs, strict=True):  # each trial trained with its own values
        assert run["config"]["optimizer"]["lr"] == trial["params"]["optimizer.lr"]
        assert run["config"]["optimizer"]["weight_decay"] == trial["params"]["optimizer.weight_decay"]
        assert 1e-3 <= trial["params"]["optimizer.lr"] <= 1.0 and run["config"]["data"]["holdout"] == 64
    assert json.loads((out / "tuning.json").read_text()) == record


def test_an_interrupted_study_resumes_and_continues_the_trial_count(tmp_path, monkeypatch):
    """A kill after trial 1's run but before the study heard of it: the next start reads that run (no second
    training), then runs trial 2; a larger --trials extends the same study."""
    out, overrides, trained = tmp_path / "study", tiny_overrides(tmp_path), []
    real_train = src.tune.train

    def interrupted(cfg):
        summary = real_train(cfg)
        if cfg.hydra.job.num == 1:
            raise KeyboardInterrupt
        return summary

    monkeypatch.setattr(src.tune, "train", interrupted)
    with pytest.raises(KeyboardInterrupt):
        tune(out, overrides, SPACE)
    storage = f"sqlite:///{out / 'study.db'}"
    cut = optuna.load_study(study_name="tune", storage=storage).trials
    assert [t.state.name for t in cut] == ["COMPLETE", "RUNNING"]

    monkeypatch.setattr(src.tune, "train", lambda cfg: trained.append(cfg.hydra.job.num) or real_train(cfg))
    record = tune(out, overrides, SPACE)
    assert trained == [2] and [t["number"] for t in record["trials"]] == [0, 1, 2]
    assert record["trials"][1]["params"] == cut[1].params
    assert record["trials"][1]["value"] == on_disk(out, record)[1]["val_acc_best"]
    record = tune(out, overrides, SPACE | {"n_trials": 4})
    assert trained == [2, 3] and len(record["trials"]) == 4 and record["complete"]
    with pytest.raises(ConfigError, match="holds a study with other overrides"):
        tune(out, tiny_overrides(tmp_path, "seed=1"), SPACE)


def test_tuning_refuses_to_select_on_the_test_set(tmp_path):
    with pytest.raises(ConfigError, match=r"here the test set: set data.holdout=N$"):
        tune(tmp_path / "study", tiny_overrides(tmp_path, "data.holdout=0"), SPACE)
    with pytest.raises(ConfigError, match="searched key optimizer.lr must be .* not set by an override"):
        tune(tmp_path / "study", tiny_overrides(tmp_path, "optimizer.lr=0.1"), SPACE)


# --- the holdout split ------------------------------------------------------------------------------------


def loaded(root: Path, **kwargs) -> MNISTDataModule:
    dm = MNISTDataModule(root=root, verify_checksums=False, download=False, **kwargs)
    dm.prepare_data()
    dm.setup()
    return dm


def test_holdout_is_the_training_files_last_examples_and_leaves_training(tmp_path, monkeypatch):
    write_mnist(tmp_path)  # 256 train, 128 test
    monkeypatch.setattr(images, "normalise", lambda x, mean, std: x)  # batches as the stored uint8 pixels
    full, dm = loaded(tmp_path), loaded(tmp_path, holdout=56, batch_size=50)
    (x, y), (train_x, train_y), (val_x, val_y) = full.train_data, dm.train_data, dm.val_data
    assert len(train_y) == 200 and len(val_y) == 56
    assert torch.equal(train_x, x[:200]) and torch.equal(val_x, x[200:]) and torch.equal(val_y, y[200:])
    held = {bytes(img.flatten().tolist()) for img in val_x}
    assert len(held) == 56  # distinct images, so disjointness below is about examples, not pixels
    seen = [bytes(img.flatten().tolist()) for images, _ in dm.train_dataloader() for img in images]
    # every image of an epoch's batches is a kept example, never a held-out one
    kept = {bytes(img.flatten().tolist()) for img in train_x}
    assert len(seen) == 200 and set(seen) <= kept and not (set(seen) & held)
    other = loaded(tmp_path, holdout=56, seed=7)  # the seed orders batches only: the same split
    assert torch.equal(other.val_data[0], val_x) and torch.equal(other.train_data[0], train_x)
    cut = loaded(tmp_path, holdout=56, train_subset=100, val_subset=20)
    assert torch.equal(cut.train_data[0], x[:100]) and torch.equal(cut.val_data[0], x[200:220])


def test_bad_holdout_is_one_line(tmp_path):
    write_mnist(tmp_path)
    where = MNISTDataModule.files.directory(tmp_path)
    with pytest.raises(DataError) as err:
        loaded(tmp_path, holdout=256)
    assert str(err.value) == f"data.holdout=256 must be below the 256 train examples in {where}"
    with pytest.raises(DataError) as err:
        loaded(tmp_path, holdout=56, train_subset=201)
    assert str(err.value) == (
        f"data.train_subset=201 exceeds the 200 train examples left after data.holdout=56 in {where}"
    )
    with pytest.raises(ValueError, match=r"^data.holdout must be an integer >= 0, got -1$"):
        MNISTDataModule(root=tmp_path, holdout=-1)
    with pytest.raises(ConfigError, match=r"^data.holdout must be >= 0, got -1$"):
        validate(fast_cfg(tmp_path, "lenet5", "data.holdout=-1"))


@pytest.mark.slow  # a fresh interpreter importing torch, Lightning and Optuna: ~20 s on the shared 2-core CPU
def test_bad_holdout_on_the_command_line_is_one_line(tmp_path):
    args = tiny_overrides(tmp_path, "data.holdout=1000")
    args = [a for a in args if a != "data.holdout=64"]
    done = subprocess.run(
        [sys.executable, "-m", "src.tune", f"--out={tmp_path / 'study'}", "--trials=1", *args],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    where = tmp_path / "data" / "cifar-10-batches-py"
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == (
        f"error: data.holdout=1000 must be below the 256 train examples in {where}"
    )
    assert not list((tmp_path / "study").glob("trial*"))  # refused before any trial


# --- the pipeline's tune and tuned stages -----------------------------------------------------------------


def test_mnist_tune_profile_tunes_each_ste_then_retrains_its_best(tmp_path, monkeypatch):
    """Stages run with fake launchers: pretrain and table1 'finish', each study 'finds' lr = 0.01 × (index+1)."""
    launched, studies = {}, []

    def fake_hydra(stage_dir: Path, args: list[str], launcher) -> None:
        job = dict(a.split("=", 1) for a in args if not a.startswith("seed="))
        launched.setdefault(stage_dir.name, []).append(args)
        run = stage_dir / f"run{len(list(stage_dir.glob('run*')))}"
        run.mkdir(parents=True)
        bits = None if job.get("quant") == "fp" else int(job["quant.bits"])
        summary = {"experiment": job["experiment"], "seed": 0, "tag": job.get("tag"), "bits": bits}
        summary |= {
            "ste": job.get("ste"),
            "status": "finished",
            "diverged": False,
            "checkpoint": f"{run}/c.ckpt",
        }
        (run / "summary.json").write_text(json.dumps(summary))

    def fake_tune(where: Path, cmd: list[str], args: list[str]):
        studies.append((where, cmd))
        best = {
            "params": {"optimizer.lr": 0.01 * len(studies), "optimizer.weight_decay": 1e-5},
            "value": 99.0,
        }
        where.mkdir(parents=True)
        (where / "tuning.json").write_text(json.dumps({"complete": True, "n_trials": 6, "best": best}))
        return 0, where / "log"

    monkeypatch.setattr(reproduce, "run_hydra", fake_hydra)
    monkeypatch.setattr(reproduce, "run_logged", fake_tune)
    profile = reproduce.load_profile("mnist_tune") | {"name": "mnist_tune"}
    pipeline = reproduce.Pipeline(profile, tmp_path, None, [])
    for stage in ("pretrain", "table1", "tune", "tuned"):
        assert getattr(pipeline, stage)()
    assert not pipeline.tune()  # every study complete: nothing launched again
    fp = f"{tmp_path}/pretrain/run0/c.ckpt"
    assert [w.relative_to(tmp_path).as_posix() for w, _ in studies] == [
        f"tune/lenet5_mnist/{ste}-2bit" for ste in ("identity", "relu", "clipped_relu")
    ]
    for where, cmd in studies:
        assert cmd[1:5] == ["-m", "src.tune", f"--out={where}", "--trials=6"]
        cfg = make_cfg(tmp_path / "compose", cmd[5:])  # what each trial composes, before its own values
        assert cfg.data.holdout == 5000 and cfg.data.train_subset == 20000 and cfg.trainer.max_epochs == 2
        assert cfg.init.checkpoint == fp and cfg.quant.bits == 2 and list(cfg.scheduler.milestones) == [1]
    tuned = [make_cfg(tmp_path / "compose", args) for args in launched["tuned"]]
    assert sorted((c.ste.name, c.optimizer.lr, c.tag) for c in tuned) == [
        ("clipped_relu", 0.03, "tuned"), ("identity", 0.01, "tuned"), ("relu", 0.02, "tuned")
    ]  # fmt: skip
    for cfg in tuned:  # Table 1's schedule and data: the full training set, validated on the test set
        assert cfg.data.holdout == 0 and cfg.data.train_subset is None and cfg.trainer.max_epochs == 3
        assert list(cfg.scheduler.milestones) == [2] and cfg.optimizer.weight_decay == 1e-5
        assert cfg.init.checkpoint == fp
