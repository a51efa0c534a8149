"""The framework end to end: config composition, short runs of every model × paper STE, the run directory, resume,
init from a checkpoint, multirun, bad input, and one real-data check."""

import csv
import json
import math
import os
import subprocess
import sys
from functools import partial
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from hydra.utils import instantiate

from src.config import ConfigError
from src.data.batches import Batches
from src.models import build_model
from src.module import STEModule
from src.quant import STES, QuantReLU
from src.train import build_callbacks, train
from tests.conftest import REPO
from tests.runs import FAST, FAST_TRAINER, data_overrides, fast_cfg, make_cfg

GROUPS = {p.name: sorted(f.stem for f in p.glob("*.yaml")) for p in (REPO / "conf").iterdir() if p.is_dir()}
PAPER_STES = ["identity", "relu", "clipped_relu"]
MODELS = ["lenet5", "vgg11", "resnet20", "tiny", "two_layer"]
SLOW_MODELS = {"vgg11", "resnet20"}  # 6–22 s a short run on the 2-core VM


def read_csv(path: Path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


def epoch_values(rows: list[dict], key: str) -> list[float]:
    return [float(r[key]) for r in rows if r.get(key) not in (None, "")]


# ---- composition ---------------------------------------------------------------------------------------------


def test_config_groups_are_the_documented_ones():
    """--help lists conf/'s folders as groups: exactly the training ones (profiles and search spaces are in
    conf_tools/, where src.reproduce and src.tune read them)."""
    assert set(GROUPS) == {
        "model",
        "data",
        "ste",
        "quant",
        "wquant",
        "optimizer",
        "scheduler",
        "trainer",
        "logger",
    } | {
        "experiment",
        "hydra",
    }
    assert set(GROUPS["model"]) == {"lenet5", "vgg11", "resnet20", "resnet18", "two_layer", "tiny"}
    assert set(GROUPS["trainer"]) == {"default", "cpu", "gpu", "ddp"}


def group_cases():
    for group, options in GROUPS.items():
        for option in options:
            if (group, option) != (
                "data",
                "imagefolder",
            ):  # a folder of JPEGs: tests/test_imagefolder.py builds one
                yield group, option


@pytest.mark.parametrize("group,option", list(group_cases()))
def test_every_group_option_composes_and_instantiates(tmp_path, group, option):
    model = {"model": option}.get(
        group,
        "two_layer"
        if (group, option) in {("data", "gaussian"), ("quant", "binary")}
        else "lenet5"
        if (group, option) == ("data", "mnist")
        else "tiny",
    )
    cfg = fast_cfg(tmp_path, model, f"{group}={option}")
    node = cfg[group] if group != "experiment" else cfg
    if group in ("trainer",) and option in ("gpu", "ddp"):
        assert node.accelerator == "gpu"  # instantiating needs a GPU; composing must work everywhere
        return
    if group in ("model", "data", "quant", "ste", "optimizer", "scheduler", "logger"):
        built = instantiate(cfg.data)
        net = instantiate(
            cfg.model, act=instantiate(cfg.quant), in_shape=built.input_shape, num_classes=built.num_classes
        )
        opt = instantiate(cfg.optimizer)(params=net.parameters())
        instantiate(cfg.scheduler)(optimizer=opt)
        assert all(instantiate(c) is not None for c in cfg.logger.values())
    else:
        instantiate(cfg.trainer)


def test_defaults_are_the_papers_headline_setting(tmp_path):
    cfg = make_cfg(tmp_path, [])
    assert (cfg.model.name, cfg.hydra.runtime.choices.data, cfg.ste.name) == (
        "resnet20",
        "cifar10",
        "clipped_relu",
    )
    assert (cfg.quant.bits, cfg.quant.alpha, cfg.quant.alpha_mode) == (2, "lloyd", "fixed")
    assert (cfg.optimizer.lr, cfg.optimizer.momentum, list(cfg.scheduler.milestones)) == (
        0.01,
        0.9,
        [80, 140],
    )
    assert cfg.trainer.max_epochs == 200 and cfg.data.batch_size == 128
    assert cfg.run_name == "resnet20-cifar10-clipped_relu-2bit-s0"


# ---- short runs ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "model", [m if m not in SLOW_MODELS else pytest.param(m, marks=pytest.mark.slow) for m in MODELS]
)
@pytest.mark.parametrize("ste", PAPER_STES)
def test_short_run_every_model_and_paper_ste(tmp_path, model, ste):
    cfg = fast_cfg(tmp_path, model, f"ste={ste}", "optimizer.lr=0.05")
    summary = train(cfg)
    run = Path(cfg.paths.output_dir)
    assert (
        math.isfinite(summary["train_loss"])
        and math.isfinite(summary["val_loss"])
        and not summary["diverged"]
    )
    assert summary["epochs"] == 1 and summary["ste"] == ste
    assert json.loads((run / "summary.json").read_text()) == summary
    assert (run / "checkpoints" / "last.ckpt").is_file() and (run / "config.yaml").is_file()
    rows = read_csv(run / "metrics.csv")
    assert epoch_values(rows, "train/loss") == pytest.approx([summary["train_loss"]])
    if model != "two_layer":
        assert 0 <= summary["val_acc"] <= 100


def test_run_dir_holds_config_provenance_and_metrics(tmp_path):
    cfg = fast_cfg(tmp_path, "tiny", "seed=3")
    train(cfg)
    run = Path(cfg.paths.output_dir)
    saved = (run / "config.yaml").read_text()
    assert "seed: 3" in saved and "${" not in saved  # resolved
    prov = json.loads((run / "provenance.json").read_text())
    assert (
        prov["versions"]["torch"] == torch.__version__.split("+")[0]
        or prov["versions"]["torch"] == torch.__version__
    )
    assert {"git_commit", "hardware", "command"} <= set(prov)
    assert cfg.run_name == "tiny-cifar10-clipped_relu-2bit-s3"


def test_loggers_get_metrics_csv_epoch_axis(tmp_path, monkeypatch):
    """What W&B (any Lightning logger) receives: each metric with ``epoch`` = epochs trained, as metrics.csv has it
    (0 = the start, validated before fit), not Lightning's 0-based index of the epoch in progress."""
    from pytorch_lightning.loggers.logger import Logger

    class Capture(Logger):
        name, version, calls = "capture", 0, []

        def log_hyperparams(self, *args, **kwargs):
            pass

        def log_metrics(self, metrics, step=None):
            self.calls.append(dict(metrics))

    monkeypatch.setattr("src.train.build_loggers", lambda cfg, run_dir: [Capture()])
    cfg = fast_cfg(tmp_path, "tiny", "trainer.max_epochs=2")
    train(cfg)
    logged = {key: [c["epoch"] for c in Capture.calls if key in c] for key in ("val/acc", "train/loss")}
    rows = read_csv(Path(cfg.paths.output_dir) / "metrics.csv")
    assert logged["val/acc"] == [float(r["epoch"]) for r in rows] == [0.0, 1.0, 2.0]
    assert logged["train/loss"] == [float(r["epoch"]) for r in rows if r["train/loss"]] == [1.0, 2.0]


def test_progress_bar_redraws_every_refresh_rate_steps_with_the_loss(tmp_path):
    """With the bar on, conf's bar (src.progress.EpochBar, refresh_rate from the config) is the trainer's bar and shows the
    train loss, logged only on the steps it redraws; with the bar off, no bar callback reaches the trainer."""
    cfg = fast_cfg(
        tmp_path, "tiny", "trainer.enable_progress_bar=true", "callbacks.progress_bar.refresh_rate=1"
    )
    shown = {}

    class Peek(pl.Callback):
        def on_train_epoch_end(self, trainer, module):
            shown["rate"] = trainer.progress_bar_callback.refresh_rate
            shown["bar"] = dict(trainer.progress_bar_metrics)
            shown["epoch"] = trainer.progress_bar_callback.train_progress_bar.desc

    callbacks = [*build_callbacks(cfg), Peek()]
    Path(cfg.paths.output_dir).mkdir(parents=True)  # train() makes it; here the trainer runs alone
    trainer = instantiate(cfg.trainer, logger=False, callbacks=callbacks)
    datamodule = instantiate(cfg.data)
    model = instantiate(cfg.model, act=instantiate(cfg.quant), in_shape=datamodule.input_shape)
    trainer.fit(STEModule(model, instantiate(cfg.optimizer)), datamodule=datamodule)
    assert shown["rate"] == 1 and math.isfinite(shown["bar"]["loss"])
    assert shown["epoch"].startswith("Epoch 1/1")  # as the log line says it: "epoch 1/1", counted from 1
    off = fast_cfg(tmp_path, "tiny", run="off")  # FAST: enable_progress_bar=false
    assert not any(isinstance(c, pl.callbacks.ProgressBar) for c in build_callbacks(off))


@pytest.mark.slow
def test_training_reduces_loss_on_learnable_data(tmp_path):
    cfg = fast_cfg(
        tmp_path,
        "tiny",
        "trainer.max_epochs=4",
        "trainer.limit_train_batches=null",
        "trainer.limit_val_batches=null",
        "optimizer.lr=0.05",
    )
    train(cfg)
    losses = epoch_values(read_csv(Path(cfg.paths.output_dir) / "metrics.csv"), "train/loss")
    assert len(losses) == 4 and losses[-1] < 0.8 * losses[0]


def test_two_layer_reduces_population_loss(tmp_path):
    cfg = fast_cfg(
        tmp_path,
        "two_layer",
        "ste=clipped_relu",
        "trainer.max_epochs=6",
        "data.batches_per_epoch=50",
        "trainer.limit_train_batches=null",
        "optimizer.lr=0.5",
        "optimizer.weight_decay=0",
        "optimizer.momentum=0",
        "scheduler=constant",
    )
    train(cfg)
    rows = read_csv(Path(cfg.paths.output_dir) / "metrics.csv")
    population = epoch_values(
        rows, "val/population_loss"
    )  # the first is the start (validated before training)
    assert len(population) == 7 and population[-1] < 0.3 * population[0]


def test_divergence_is_recorded_not_crashed(tmp_path):
    cfg = fast_cfg(tmp_path, "tiny", "trainer.max_epochs=3", "optimizer.lr=1e30", "optimizer.momentum=0")
    summary = train(cfg)
    assert summary["status"] == "diverged" and summary["diverged"] and summary["epochs"] < 3
    assert summary["reason"].startswith("train/loss = ")  # beyond divergence.max_loss, or not finite


def test_train_loss_is_the_mean_over_examples_and_keeps_a_nan(tmp_path):
    """The epoch's train/loss is Σ_batches B·loss / Σ B (unequal batches), and one NaN batch makes it NaN
    (a mean that dropped it would hide the divergence)."""
    gen = torch.Generator().manual_seed(0)
    batches = [
        (torch.randn(b, 1, 8, 8, generator=gen), torch.randint(0, 10, (b,), generator=gen)) for b in (16, 4)
    ]

    def epoch_loss(batches):
        torch.manual_seed(0)
        model = build_model("tiny", partial(QuantReLU, 2, "lloyd", "clipped_relu"), (1, 8, 8))
        module = STEModule(model, partial(torch.optim.SGD, lr=0.0), num_classes=10)  # lr 0: weights stay put
        trainer = pl.Trainer(
            max_epochs=1,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            default_root_dir=tmp_path,
            accelerator="cpu",
        )
        trainer.fit(module, train_dataloaders=Batches(lambda e: iter(batches), len(batches), lambda: None))
        model.train()  # the oracle: each batch's loss from the same (unchanged) weights, BN on batch statistics
        with torch.no_grad():
            losses = [float(torch.nn.functional.cross_entropy(model(x), y)) for x, y in batches]
        return float(trainer.callback_metrics["train/loss"]), losses, module

    logged, losses, _ = epoch_loss(batches)
    assert logged == pytest.approx((16 * losses[0] + 4 * losses[1]) / 20, rel=1e-5)
    assert logged != pytest.approx(sum(losses) / 2, rel=1e-3)  # not the plain mean of batch means
    logged, _, module = epoch_loss([batches[0], (batches[1][0] * math.nan, batches[1][1])])
    assert math.isnan(logged) and module.diverged_reason == "train/loss = nan at epoch 1"


# ---- checkpoints ---------------------------------------------------------------------------------------------


def test_resume_continues_the_run(tmp_path):
    first = fast_cfg(tmp_path, "tiny", run="first")
    train(first)
    ckpt = Path(first.paths.output_dir) / "checkpoints" / "last.ckpt"
    second = fast_cfg(tmp_path, "tiny", "trainer.max_epochs=2", f"resume={ckpt}", run="second")
    summary = train(second)
    assert summary["epochs"] == 2
    rows = read_csv(Path(second.paths.output_dir) / "metrics.csv")
    assert [float(r["epoch"]) for r in rows if r["train/loss"]] == [2.0]  # only the missing 2nd epoch ran


def test_a_finished_run_is_extended_in_its_own_dir_only_to_more_epochs(tmp_path):
    """resume=<finished run dir> trainer.max_epochs=<more>: the same dir trains on, metrics.csv gains the new
    epochs' rows, provenance.json a start; as many epochs as it ran is refused in one line, nothing written."""
    first = fast_cfg(tmp_path, "tiny", run="run")
    train(first)
    run = Path(first.paths.output_dir)
    same = fast_cfg(tmp_path, "tiny", f"resume={run}", run="run")
    with pytest.raises(ConfigError, match=rf"^resume: {run} finished its 1 epochs; to train it longer set trainer"
                       r"\.max_epochs above 1 \(got 1\)$"):  # fmt: skip
        train(same)
    summary = train(fast_cfg(tmp_path, "tiny", f"resume={run}", "trainer.max_epochs=3", run="run"))
    assert summary["status"] == "finished" and summary["epochs"] == 3 and summary["max_epochs"] == 3
    assert [float(r["epoch"]) for r in read_csv(run / "metrics.csv")] == [0.0, 1.0, 2.0, 3.0]
    assert len(json.loads((run / "provenance.json").read_text())["starts"]) == 2


def test_init_from_full_precision_checkpoint(tmp_path):
    fp = fast_cfg(tmp_path, "tiny", "quant=fp", run="fp")
    train(fp)
    ckpt = Path(fp.paths.output_dir) / "checkpoints" / "last.ckpt"
    fp_weights = torch.load(ckpt, weights_only=True)["state_dict"]
    quant = fast_cfg(tmp_path, "tiny", f"init.checkpoint={ckpt}", "optimizer.lr=1e-12", run="quant")
    summary = train(quant)  # lr ≈ 0: the weights stay the FP ones (BN running statistics move on)
    assert summary["init_checkpoint"] == str(ckpt)
    loaded = torch.load(summary["checkpoint"], weights_only=True)["state_dict"]
    weights = [k for k in fp_weights if "running" not in k and "num_batches" not in k]
    assert weights and "model.2.alpha" not in fp_weights
    for key in weights:
        torch.testing.assert_close(loaded[key], fp_weights[key])
    assert loaded["model.2.alpha"].item() == pytest.approx(0.6508, abs=1e-4)  # α from this run's config


# ---- bad input -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "override,match",
    [
        ("quant.bits=17", r"bits must be an integer in \[1, 16\], got 17"),
        ("quant.bits=0", "bits must be an integer"),
        ("quant.alpha=-1", "alpha must be a number > 0"),
        ("optimizer.lr=-0.1", "optimizer.lr must be > 0, got -0.1"),
        ("optimizer.momentum=1.5", "momentum must lie in"),
        ("trainer.max_epochs=0", "trainer.max_epochs must be >= 1"),
        ("seed=-1", r"seed must be an integer in \[0, 4294967295\]"),
        ("ste=leaky_clipped_relu ste.eps=2", r"eps must lie in \[0, 1\]"),
        (
            "init.checkpoint=/nonexistent/last.ckpt",
            "init.checkpoint: no checkpoint file at /nonexistent/last.ckpt",
        ),
        ("resume=/nonexistent/last.ckpt", "resume: no run dir or checkpoint at"),
        ("model.name=alexnet", "unknown model 'alexnet'; valid names: lenet5"),
    ],
)
def test_bad_config_fails_before_training(tmp_path, override, match):
    cfg = fast_cfg(tmp_path, "tiny", *override.split())
    with pytest.raises(ConfigError, match=match):
        train(cfg)
    assert not (Path(cfg.paths.output_dir) / "checkpoints").exists()


@pytest.mark.parametrize(
    "overrides", [["model=tiny", "data=gaussian", "quant=binary"], ["model=two_layer", "quant=binary"]]
)
def test_two_layer_and_gaussian_go_together(tmp_path, overrides):
    with pytest.raises(ConfigError, match="model=two_layer goes with data=gaussian"):
        train(make_cfg(tmp_path, [*overrides, *FAST]))


def test_model_data_mismatch_and_bad_checkpoint(tmp_path):
    with pytest.raises(ConfigError, match=r"model=vgg11 cannot take this data's input \(1, 28, 28\)"):
        train(fast_cfg(tmp_path, "lenet5", "model=vgg11", run="a"))
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match="is not a readable checkpoint"):
        train(fast_cfg(tmp_path, "tiny", f"init.checkpoint={junk}", run="b"))
    other = fast_cfg(tmp_path, "tiny", "model.width=4", run="c")
    train(other)
    with pytest.raises(ConfigError, match="size mismatch|does not fit"):
        train(
            fast_cfg(
                tmp_path, "tiny", f"init.checkpoint={other.paths.output_dir}/checkpoints/last.ckpt", run="d"
            )
        )


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = os.environ | {"WANDB_MODE": "offline", "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "src.train", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    "args,match",
    [
        (["quant.bits=99"], "error: bits must be an integer in [1, 16], got 99"),
        (["optimizer.lr=-1"], "error: optimizer.lr must be > 0, got -1"),
        (["model=lenet5", "data=mnist", "data.download=false", "paths.data_dir=nowhere"], "error: "),
    ],
)
def test_cli_bad_input_is_one_line(tmp_path, args, match):
    out = cli(*args, "hydra.run.dir=" + str(tmp_path / "run"), cwd=tmp_path)
    assert out.returncode != 0
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith(match) and "Traceback" not in out.stderr


def test_cli_unknown_group_option_names_the_choices(tmp_path):
    out = cli("ste=tanh", cwd=tmp_path)
    assert out.returncode != 0 and "Could not find 'ste/tanh'" in out.stderr and "clipped_relu" in out.stderr


def tiny_sweep(tmp_path: Path, *overrides: str) -> tuple[subprocess.CompletedProcess, Path]:
    """``python -m src.train -m`` of the tiny model on tiny data, into tmp_path/sweep."""
    sweep = tmp_path / "sweep"
    fast = [*data_overrides("tiny", tmp_path / "data"), *FAST_TRAINER, f"hydra.sweep.dir={sweep}"]
    return cli("-m", "model=tiny", *fast, *overrides, cwd=tmp_path), sweep


@pytest.mark.slow
def test_multirun_gives_distinct_complete_run_dirs(tmp_path):
    out, sweep = tiny_sweep(tmp_path, "ste=identity,relu,clipped_relu")  # default logger: CSV and W&B
    assert out.returncode == 0, out.stderr[-2000:]
    runs = sorted(p for p in sweep.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert [p.name for p in runs] == [f"{i}_tiny-cifar10-{s}-2bit-s0" for i, s in enumerate(PAPER_STES)]
    wandb_ids = set()
    for run in runs:
        assert (run / "config.yaml").is_file() and (run / "metrics.csv").is_file()
        assert json.loads((run / "summary.json").read_text())["ste"] in PAPER_STES
        wandb_ids |= {p.name for p in (run / "wandb").glob("offline-run-*")}
    assert len(wandb_ids) == 3  # one W&B run per job, never shared


# ---- real data -----------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_lenet5_2bit_clipped_relu_one_epoch_on_genuine_mnist(tmp_path, shared_data):
    root = REPO / "data"  # the project's data dir: the genuine files are copied there once
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for src in (shared_data / "MNIST" / "raw").glob("*.gz"):
        if not (raw / src.name).exists():
            (raw / src.name).write_bytes(src.read_bytes())
    cfg = make_cfg(
        tmp_path / "run",
        [
            "model=lenet5",
            "data=mnist",
            f"paths.data_dir={root}",
            "trainer=cpu",
            "trainer.max_epochs=1",
            "trainer.enable_progress_bar=false",
            "logger=csv",
            "optimizer.lr=0.1",
            "scheduler.milestones=[20,40]",
            "data.download=false",
        ],
    )
    summary = train(cfg)
    print(
        f"LeNet-5 2-bit clipped_relu, 1 epoch genuine MNIST: val_acc {summary['val_acc']:.2f}%, "
        f"epoch {summary['epoch_time_s']:.1f} s"
    )
    assert summary["val_acc"] >= 97.0


@pytest.mark.slow
def test_joblib_launcher_runs_jobs_in_parallel_processes(tmp_path):
    out, sweep = tiny_sweep(
        tmp_path, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "ste=relu,clipped_relu"
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert sorted(json.loads(p.read_text())["ste"] for p in sweep.glob("*/summary.json")) == [
        "clipped_relu",
        "relu",
    ]


def test_tab_completion_in_the_readme_form_lists_the_options_without_importing_torch():
    """README: eval "$(python src/train.py -sc install=bash)", then python src/train.py ste=<TAB>: every STE, and
    neither torch nor Lightning imported (their import was each TAB's 10 s)."""
    env = os.environ | {"COMP_LINE": "python src/train.py ste="}
    out = subprocess.run(
        [sys.executable, "-X", "importtime", "src/train.py", "-sc", "query=bash"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
    )
    assert out.stdout.split() == [f"ste={s}" for s in sorted(STES)], out.stderr[-1000:]
    imported = {line.rsplit("|", 1)[-1].strip() for line in out.stderr.splitlines()}
    assert "src.completion" in imported and not imported & {"torch", "pytorch_lightning", "src.config"}


@pytest.mark.parametrize("bits", [None, 2])
def test_channels_last_matches_nchw_outputs_and_gradients(bits):
    """model.channels_last (ResNet-20's default) changes the memory layout only: same state dict, same numbers.

    Both run in float64: the staircase is discontinuous (and train-mode BN on 8 examples amplifies), so in
    float32 the last-bit differences of another summation order flip a few levels deep in the net; float64
    keeps every level and still tests the NHWC path of every conv, the quantizer and the STE backward."""
    from src.models import build_model
    from src.quant import QuantReLU

    act = lambda: QuantReLU(bits=bits, alpha="lloyd", ste="clipped_relu")  # noqa: E731
    dtype = torch.float64
    torch.manual_seed(0)
    nchw = build_model("resnet20", act=act).to(dtype)
    fast = build_model("resnet20", act=act, channels_last=True).to(dtype)
    fast.load_state_dict(nchw.state_dict())
    x, y = torch.randn(8, 3, 32, 32, dtype=dtype), torch.randint(0, 10, (8,))
    outs = []
    for model in (nchw, fast):
        out = model(x)
        torch.nn.functional.cross_entropy(out, y).backward()
        outs.append((out, [p.grad for p in model.parameters()]))
    assert next(fast.parameters()).is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(outs[0][0], outs[1][0], rtol=1e-9, atol=1e-10)
    for a, b in zip(outs[0][1], outs[1][1], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-9)
