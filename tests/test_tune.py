"""Per-STE tuning (src/tune.py) and its data: a 3-trial Optuna search on the tiny model offline (trial 0 the
config's own lr and weight decay), per-study sampler seeds, the one-SE tie rule, MedianPruner stopping a worse trial,
resuming an interrupted study, the holdout split (sizes, disjoint from training, deterministic, one-line errors) and
the mnist_tune profile's tune / tuned stages."""

import math
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest
import torch
import yaml

import src.data.images as images
import src.tune
from src.compose import compose_run
from src.config import ConfigError, validate
from src.data.files import DataError
from src.data.images import MNISTDataModule
from src.pruning import Pruning
from src.reproduce import jobs
from src.reproduce.profile import load_profile
from src.reproduce.stages import Pipeline
from src.runs import read_json, write_summary, write_tuning
from src.runs.job import run_config
from src.selection import select
from src.tune import open_study, storage_url, tune
from tests.conftest import REPO
from tests.datafiles import write_mnist
from tests.runs import FAST, data_overrides, fast_cfg, make_cfg
from tests.test_profiles import expand

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
        summary = read_json(run / "summary.json")
        runs.append(summary | {"config": yaml.safe_load((run / "config.yaml").read_text())})
    return runs


@pytest.mark.slow
def test_three_trial_search_tries_the_default_first_and_selects_within_one_se(tmp_path):
    out = tmp_path / "study"
    record = tune(out, tiny_overrides(tmp_path), SPACE)
    runs = on_disk(out, record)
    assert [t["number"] for t in record["trials"]] == [0, 1, 2] and record["complete"]
    assert [t["state"] for t in record["trials"]] == ["COMPLETE"] * 3
    # trial 0: the run config's own values (conf/optimizer/sgd.yaml), as composed without the search
    assert record["trials"][0]["params"] == {"optimizer.lr": 0.01, "optimizer.weight_decay": 1e-4}
    assert record["default"] == record["trials"][0]["params"]
    values = [run["val_acc_best"] for run in runs]
    assert len(set(values)) > 1  # the trials differ, so picking the best one is a real choice
    best, sel = values.index(max(values)), record["selection"]
    assert (
        sel["best_trial"] == best
        and sel["best_value"] == max(values)
        and sel["n_holdout"] == runs[best]["val_examples"]
    )
    p = max(values) / 100
    assert sel["se"] == pytest.approx(100 * math.sqrt(p * (1 - p) / sel["n_holdout"]))
    assert sel["ties"] == [i for i, v in enumerate(values) if v >= max(values) - sel["se"] - 1e-9]
    assert record["best"]["number"] == sel["chosen"] and sel["chosen"] in sel["ties"]
    for trial, run in zip(record["trials"], runs, strict=True):  # each trial trained with its own values
        assert run["config"]["optimizer"]["lr"] == trial["params"]["optimizer.lr"]
        assert run["config"]["optimizer"]["weight_decay"] == trial["params"]["optimizer.weight_decay"]
        assert 1e-3 <= trial["params"]["optimizer.lr"] <= 1.0 and run["config"]["data"]["holdout"] == 64
    assert read_json(out / "tuning.json") == record


@pytest.mark.slow
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


def first_draws(out: Path, overrides: list[str], count: int = 3) -> list[dict]:
    """The first ``count`` trials' values a new study in ``out`` asks for (nothing trained)."""
    base = compose_run(overrides, out)
    study = open_study(out, overrides, SPACE, base)
    grid = {
        k: optuna.distributions.FloatDistribution(r["low"], r["high"], log=r["log"])
        for k, r in SPACE["params"].items()
    }
    return [study.ask(grid).params for _ in range(count)]


def test_each_ste_study_draws_its_own_start_up_points_after_the_default(tmp_path):
    draws = {
        (ste, again): first_draws(tmp_path / f"{ste}{again}", tiny_overrides(tmp_path, f"ste={ste}"))
        for ste in ("identity", "relu")
        for again in (0, 1)
    }
    default = {"optimizer.lr": 0.01, "optimizer.weight_decay": 1e-4}
    assert all(d[0] == default for d in draws.values())  # trial 0 of every study: the config's values
    assert draws["identity", 0][1:] == draws["identity", 1][1:]  # the same study draws the same points
    randoms = [p for ste in ("identity", "relu") for p in draws[ste, 0][1:]]
    assert len({tuple(p.values()) for p in randoms}) == 4  # identity's random points are not relu's


def trial(number: int, lr: float, wd: float, value: float, n: int = 5000) -> dict:
    """A tuning.json trial record, as src.tune.trial_record writes it."""
    params = {"optimizer.lr": lr, "optimizer.weight_decay": wd}
    return {"number": number, "state": "COMPLETE", "params": params, "value": value, "val_examples": n}


def test_ties_within_one_se_go_to_the_trial_nearest_the_default():
    ranges, default = SPACE["params"], {"optimizer.lr": 0.1, "optimizer.weight_decay": 1e-4}
    # best 98.0 % on 5,000: SE = 100·√(0.98·0.02/5000) = 0.198 pt, so 97.85 ties and 97.7 does not
    trials = [
        trial(0, 0.1, 1e-4, 97.70),  # the default itself, just outside one SE
        trial(1, 0.3, 1e-3, 98.00),  # the best: 0.48 + 1 decade away
        trial(2, 0.05, 2e-4, 97.85),  # a tie, 0.3 + 0.3 decades away: the nearest tie
        trial(3, 0.02, 1e-6, 97.90),  # a tie, farther (0.7 + 2 decades)
        trial(4, 0.1, 1e-4, 99.0) | {"state": "PRUNED"},  # only finished trials count
    ]
    sel = select(trials, default, ranges)
    assert sel["se"] == pytest.approx(100 * math.sqrt(0.98 * 0.02 / 5000))
    assert (sel["best_trial"], sel["best_value"], sel["ties"], sel["chosen"]) == (1, 98.0, [1, 2, 3], 2)
    assert sel["distance"]["2"] == pytest.approx(math.hypot(math.log10(2), math.log10(2)))
    # a larger holdout shrinks the SE: then the best stands alone
    assert select([t | {"val_examples": 100000} for t in trials], default, ranges)["ties"] == [1]
    assert select([trials[4]], default, ranges)["chosen"] is None


def fake_trainer(value: float, epoch: int = 0) -> SimpleNamespace:
    """What Pruning reads of a Lightning trainer after an epoch's validation."""
    state = SimpleNamespace(fn="fit")
    metrics = {"val/acc": torch.tensor(value)}
    return SimpleNamespace(callback_metrics=metrics, sanity_checking=False, state=state, current_epoch=epoch,
                           should_stop=False)  # fmt: skip


def study_with_finished(out: Path, scores: list[float]) -> optuna.Study:
    """A study in out/study.db with finished trials whose epoch-1 holdout top-1 are ``scores``."""
    out.mkdir(parents=True)
    study = optuna.create_study(storage=storage_url(out), study_name="tune", direction="maximize")
    dist = {"optimizer.lr": optuna.distributions.FloatDistribution(1e-3, 1.0, log=True)}
    for score in scores:
        study.add_trial(
            optuna.trial.create_trial(
                params={"optimizer.lr": 0.1}, distributions=dist, value=score, intermediate_values={1: score}
            )  # fmt: skip
        )
    return study


def test_median_pruner_stops_a_clearly_worse_trial_only(tmp_path):
    study = study_with_finished(tmp_path / "study", [80.0, 85.0, 90.0, 92.0, 95.0])  # median 90
    for value, pruned in ((93.0, False), (20.0, True)):
        number = study.ask().number
        trainer = fake_trainer(value)
        Pruning(storage_url(tmp_path / "study"), number).on_validation_end(trainer, None)
        frozen = study.get_trials()[number]
        assert trainer.should_stop is pruned and frozen.intermediate_values == {1: value}
        assert frozen.user_attrs.get("pruned") == ({"epoch": 1, "value": 20.0} if pruned else None)
    fewer = study_with_finished(tmp_path / "fewer", [80.0, 95.0])  # under n_startup_trials = 5: never pruned
    trainer = fake_trainer(1.0)
    Pruning(storage_url(tmp_path / "fewer"), fewer.ask().number).on_validation_end(trainer, None)
    assert not trainer.should_stop


def test_a_pruned_trial_stops_after_its_first_epoch_and_its_summary_says_so(tmp_path):
    """Five finished trials at 99 % after epoch 1: the tiny model's trial 0 is pruned there, not trained on."""
    overrides = [o for o in tiny_overrides(tmp_path) if o != "trainer.max_epochs=1"] + [
        "trainer.max_epochs=2"
    ]
    out = tmp_path / "study"
    study = open_study(out, overrides, SPACE, compose_run(overrides, out))  # trial 0 (the default) enqueued
    grid = {
        k: optuna.distributions.FloatDistribution(r["low"], r["high"], log=r["log"])
        for k, r in SPACE["params"].items()
    }
    for _ in range(5):
        study.add_trial(optuna.trial.create_trial(params={"optimizer.lr": 0.1, "optimizer.weight_decay": 1e-4},
                        distributions=grid, value=99.0, intermediate_values={1: 99.0}))  # fmt: skip
    record = tune(out, overrides, SPACE | {"n_trials": 6})
    pruned = record["trials"][0]
    summary = read_json(out / pruned["run_dir"] / "summary.json")
    assert pruned["state"] == "PRUNED" and pruned["run_status"] == "pruned" and summary["status"] == "pruned"
    assert summary["epochs"] == 1 and summary["max_epochs"] == 2 and list(pruned["intermediate"]) == ["1"]
    assert summary["reason"].startswith("pruned by MedianPruner after epoch 1: holdout top-1 ")
    assert record["selection"]["chosen"] != 0 and record["complete"]


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


@pytest.mark.slow
def test_mnist_tune_profile_tunes_each_ste_then_retrains_its_best(tmp_path, monkeypatch):
    """Stages run with fake launchers: pretrain and table1 'finish', each study 'finds' lr = 0.01 × (index+1)."""
    launched, studies = {}, []

    def fake_hydra(stage_dir: Path, args: list[str], launcher) -> None:
        for job in expand(args):  # a sweep (ste=a,b,c): one run per job
            launched.setdefault(stage_dir.name, []).append(job)
            run = stage_dir / f"run{len(list(stage_dir.glob('run*')))}"
            run.mkdir(parents=True)
            cfg = make_cfg(run, job)  # recorded by the real writer: later stages find the run by its identity
            fields = {"status": "finished", "diverged": False, "checkpoint": f"{run}/c.ckpt"}
            write_summary(run, run_config(cfg), cfg.hydra.runtime.choices, fields)

    def fake_tune(where: Path, cmd: list[str], args: list[str]):
        studies.append((where, cmd))
        best = {
            "params": {"optimizer.lr": 0.01 * len(studies), "optimizer.weight_decay": 1e-5},
            "value": 99.0,
        }
        where.mkdir(parents=True)
        write_tuning(where, {"complete": True, "n_trials": 20, "best": best})
        return 0, where / "log"

    monkeypatch.setattr(jobs, "run_hydra", fake_hydra)
    monkeypatch.setattr(jobs, "run_logged", fake_tune)
    profile = load_profile("mnist_tune") | {"name": "mnist_tune"}
    pipeline = Pipeline(profile, tmp_path, None, [])
    for stage in ("pretrain", "table1", "tune", "tuned"):
        assert getattr(pipeline, stage)()
    assert not pipeline.tune()  # every study complete: nothing launched again
    fp = f"{tmp_path}/pretrain/run0/c.ckpt"
    assert [w.relative_to(tmp_path).as_posix() for w, _ in studies] == [
        f"tune/lenet5_mnist/{ste}-2bit" for ste in ("identity", "relu", "clipped_relu")
    ]
    for where, cmd in studies:
        assert cmd[1:5] == ["-m", "src.tune", f"--out={where}", "--trials=20"]
        cfg = make_cfg(tmp_path / "compose", cmd[5:])  # what each trial composes, before its own values
        assert cfg.data.holdout == 5000 and cfg.data.train_subset == 20000 and cfg.trainer.max_epochs == 2
        assert cfg.init.checkpoint == fp and cfg.quant.bits == 2 and list(cfg.scheduler.milestones) == [1]
    tuned = [make_cfg(tmp_path / "compose", args) for args in launched["tuned"]]
    best_lr = {"identity": 0.01, "relu": 0.02, "clipped_relu": 0.03}  # studies in this order (fake_tune)
    assert sorted((c.ste.name, c.seed, c.optimizer.lr, c.tag) for c in tuned) == sorted(
        (ste, seed, lr, "tuned") for ste, lr in best_lr.items() for seed in (0, 1, 2)
    )  # each STE's one study retrains with every seed of the profile
    for cfg in tuned:  # Table 1's schedule and data: the full training set, validated on the test set
        assert cfg.data.holdout == 0 and cfg.data.train_subset is None and cfg.trainer.max_epochs == 3
        assert list(cfg.scheduler.milestones) == [2] and cfg.optimizer.weight_decay == 1e-5
        assert cfg.init.checkpoint == f"{tmp_path}/pretrain/run{cfg.seed}/c.ckpt"  # its own seed's FP model
