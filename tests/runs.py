"""Compose the real config (conf/train.yaml) for tests, shrunk to seconds, as Hydra would for a job."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from src.compose import compose_run
from src.naming import register_resolvers
from src.runs import write_summary
from tests.datafiles import write_cifar10, write_mnist

register_resolvers()

# Seconds, not hours: one epoch of two tiny batches, CPU, no progress bar (and CSV only, in FAST).
FAST_TRAINER = [
    "trainer=cpu",
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=2",
    "trainer.limit_val_batches=1",
    "trainer.enable_progress_bar=false",
]
FAST = [*FAST_TRAINER, "logger=csv"]
DATA_FOR = {"lenet5": "mnist", "two_layer": "gaussian"}  # every other model takes CIFAR-shaped input


def fake_data(root: Path) -> Path:
    """Tiny MNIST and CIFAR-10 in their genuine on-disk formats under ``root`` (written once per root)."""
    if not (root / "MNIST").exists():
        write_mnist(root)
        write_cifar10(root)
    return root


def data_overrides(model: str, root: Path) -> list[str]:
    """The data (and quant) options a model needs, read from files the tests wrote (no checksums to match)."""
    data = DATA_FOR.get(model, "cifar10")
    if data == "gaussian":
        return ["data=gaussian", "quant=binary", "data.batches_per_epoch=2", "data.val_samples=256"]
    return [
        f"data={data}",
        f"paths.data_dir={fake_data(root)}",
        "data.verify_checksums=false",
        "data.download=false",
        "data.batch_size=16",
        "data.val_batch_size=32",
    ]


def make_cfg(run_dir: Path, overrides: list[str]) -> DictConfig:
    """The composed config with Hydra's runtime set, so ${hydra:...} resolves and train(cfg) runs as a job."""
    return compose_run(overrides, run_dir)


def fast_cfg(tmp_path: Path, model: str = "tiny", *overrides: str, run: str = "run") -> DictConfig:
    """A seconds-long run of ``model`` on tiny data under tmp_path/run."""
    return make_cfg(
        tmp_path / run, [f"model={model}", *data_overrides(model, tmp_path / "data"), *FAST, *overrides]
    )


def job_run(run_dir: Path, job: dict, **fields) -> Path:
    """A done run of a pipeline job ({"experiment": ..., "seed": 0, "ste": "relu", "quant.bits": 2} as overrides),
    written by src/runs' own writer as src.train would: its config, Hydra choices and ``fields`` (status, ...)."""
    fp = job.get("quant") == "fp"
    bits = None if fp else int(job["quant.bits"])
    config = {
        "run_name": run_dir.name,
        "seed": int(job["seed"]),
        "tag": job.get("tag"),
        "quant": {"bits": bits},
        "ste": {"name": job.get("ste", "clipped_relu")},
        "wquant": {"name": job.get("wquant", "fp"), "bits": job.get("wquant.bits")},
        "init": {"checkpoint": job.get("init.checkpoint")},
    }
    choices = {
        "experiment": job["experiment"],
        "quant": "fp" if fp else "default",
        "wquant": config["wquant"]["name"],
    }
    choices |= {"ste": config["ste"]["name"]}
    run_dir.mkdir(parents=True, exist_ok=True)
    status = fields.get("status", "finished")
    summary = {"experiment": job["experiment"], "seed": config["seed"], "tag": config["tag"], "bits": bits}
    summary |= {"ste": job.get("ste"), "status": status, "diverged": status == "diverged"}
    summary |= {"checkpoint": str(run_dir / "checkpoints" / "last.ckpt")} | fields
    write_summary(run_dir, config, choices, summary)
    return run_dir
