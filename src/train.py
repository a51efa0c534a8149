"""Train one run: ``python -m src.train ste=relu quant.bits=4``; sweep with ``-m ste=identity,relu quant.bits=2,4``.

Every run directory holds config.yaml (resolved), provenance.json, metrics.csv, checkpoints/ and summary.json
(src/rundir.py). A run cut off by a kill resumes in place: ``resume=<run dir>``, or the same sweep command again.
"""

from __future__ import annotations

import json
import logging
import platform
import shutil
import sys
import time
import traceback
import uuid
from pathlib import Path

import hydra
import pytorch_lightning as pl
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.loggers import WandbLogger

from src.config import ConfigError, check_checkpoint, checkpoint_file, register_resolvers, validate
from src.module import STEModule
from src.provenance import provenance
from src.quant.weights import weight_token
from src.rundir import SaveError, atomic_write, finite

register_resolvers()
log = logging.getLogger(__name__)
IDENTITY = (
    "model",
    "data",
    "quant",
    "wquant",
    "ste",
    "optimizer",
    "scheduler",
    "seed",
    "tag",
    "init",
)  # what resume must match
DONE = ("finished", "diverged")


def train(cfg: DictConfig) -> dict:
    """Train the run ``cfg`` describes; return its final metrics (also written to <run dir>/summary.json).

    Every check (config, data, model, checkpoints) comes before the first file is written.
    """
    validate(cfg)
    take_share(cfg.share)
    run_dir = Path(cfg.paths.output_dir)
    resume = resume_checkpoint(cfg, run_dir)
    pl.seed_everything(cfg.seed, workers=True)
    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()  # a missing or corrupt dataset fails here, before anything is built
    act = instantiate(cfg.quant)
    model = instantiate(
        cfg.model,
        act=act,
        wquant=instantiate(cfg.wquant),
        in_shape=datamodule.input_shape,
        num_classes=datamodule.num_classes,
    )
    check_input(model, datamodule.input_shape, cfg.model.name)
    module = STEModule(
        model,
        instantiate(cfg.optimizer),
        instantiate(cfg.scheduler),
        datamodule.num_classes,
        config=run_config(cfg),
        in_shape=tuple(datamodule.input_shape),
        max_loss=float(cfg.divergence.max_loss),
    )
    if cfg.init.checkpoint and not resume:
        load_weights(module, cfg.init.checkpoint)
    record_start(cfg, run_dir, resumed=bool(resume))
    loggers = build_loggers(cfg, run_dir)
    trainer = instantiate(cfg.trainer, logger=loggers or False, callbacks=build_callbacks(cfg))
    log.info("run %s in %s%s", cfg.run_name, run_dir, f", resumed from {resume}" if resume else "")
    try:
        if not resume:  # the starting point's val metrics: metrics.csv row 0 (Figures 2 and 4 start there)
            trainer.validate(module, datamodule=datamodule, verbose=False)
        trainer.fit(module, datamodule=datamodule, ckpt_path=resume)
    finally:
        finish_wandb(loggers)
    return write_summary(cfg, trainer, module, run_dir)


def build_callbacks(cfg: DictConfig) -> list:
    """conf/train.yaml's callbacks; the progress bar only when the trainer shows one (Lightning refuses a bar
    callback with enable_progress_bar false)."""
    return [
        instantiate(c)
        for name, c in cfg.callbacks.items()
        if c and (name != "progress_bar" or cfg.trainer.enable_progress_bar)
    ]


def take_share(share: DictConfig) -> None:
    """This run's slice of a machine that concurrent runs share (the joblib launcher): CPU threads and a cap on
    the GPU memory it may allocate, so N runs on one GPU cannot starve each other of memory."""
    if share.threads:
        torch.set_num_threads(share.threads)
    if share.gpu_memory_fraction and torch.cuda.is_available():
        torch.cuda.set_per_process_memory_fraction(share.gpu_memory_fraction)


def run_config(cfg: DictConfig) -> dict:
    """The resolved config without Hydra's own node: what config.yaml and the checkpoint's hparams hold."""
    container = OmegaConf.to_container(cfg, resolve=True)
    container.pop("hydra", None)
    return container


def resume_checkpoint(cfg: DictConfig, run_dir: Path) -> str | None:
    """The checkpoint to continue from: ``resume`` (a run dir or a .ckpt), else this run dir's own last.ckpt
    when an earlier start of the same run was cut off; None for a fresh run. The config must match the run's."""
    summary = read_json(run_dir / "summary.json")
    if summary.get("status", "finished" if summary else None) in DONE:
        raise ConfigError(f"{run_dir} already holds a {summary.get('status', 'finished')} run (summary.json)")
    path = checkpoint_file(cfg.resume or str(run_dir))
    if not path.is_file():
        if cfg.resume:
            raise ConfigError(f"resume: no checkpoint at {path}")
        return None
    saved = run_dir / "config.yaml"
    if saved.is_file():
        old, new = OmegaConf.load(saved), OmegaConf.create(run_config(cfg))
        for key in IDENTITY:
            if OmegaConf.select(old, key) != OmegaConf.select(new, key):
                raise ConfigError(
                    f"resume: {run_dir} was trained with another {key} ({saved}); repeat that run's overrides"
                )
    return str(path)


def record_start(cfg: DictConfig, run_dir: Path, resumed: bool) -> None:
    """config.yaml (resolved) and provenance.json: the first start's record plus ``starts``, one per start."""
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(run_dir / "config.yaml", OmegaConf.to_yaml(OmegaConf.create(run_config(cfg))).encode())
    now = provenance() | {
        "data_root": str(Path(cfg.paths.data_dir).resolve()),
        "data_checksums_verified": cfg.data.get("verify_checksums", None),
    }
    record = read_json(run_dir / "provenance.json") if resumed else {}
    record = (record or now) | {"starts": [*record.get("starts", []), start_entry(now)]}
    atomic_write(run_dir / "provenance.json", json.dumps(record, indent=2).encode())


def start_entry(prov: dict) -> dict:
    return {k: prov[k] for k in ("git_commit", "time_utc", "command")} | {"host": platform.node()}


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except ValueError:
        return {}


def check_input(model: torch.nn.Module, in_shape, name: str) -> None:
    """One forward pass on zeros of the data's shape, so a model/data mismatch fails before training."""
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(2, *in_shape))
    except RuntimeError as err:
        raise ConfigError(
            f"model={name} cannot take this data's input {tuple(in_shape)}: {str(err).splitlines()[0]}"
        ) from None
    model.train()


def load_weights(module: STEModule, path: str) -> None:
    """Start from a checkpoint's weights only (weights_only=True), e.g. quantized fine-tuning from an FP run.

    α and a learned weight step follow this run's config: a checkpoint's (another bit width, or none for FP) are
    not loaded; a weight step starts from the loaded weights (src/quant/weights.py).
    """
    state = check_checkpoint(path, "init.checkpoint")  # readable, holds a state_dict (one-line errors)
    own_only = (".alpha", ".weight_step")
    state = {k: v for k, v in state["state_dict"].items() if not k.endswith(own_only)}
    own = {k for k in module.state_dict() if not k.endswith(own_only)}
    if set(state) != own:
        raise ConfigError(
            f"init.checkpoint {path} does not fit model={module.hparams.config['model']['name']}: "
            f"{len(own - set(state))} missing and {len(set(state) - own)} unexpected tensors"
        )
    try:
        module.load_state_dict(state, strict=False)
    except RuntimeError as err:
        raise ConfigError(f"init.checkpoint {path}: {str(err).splitlines()[-1].strip()}") from None


def flat_config(cfg: DictConfig) -> dict:
    """The run config as flat, readable keys for W&B (model.name, quant.bits, ...), without Hydra's _target_s."""
    out = {}

    def walk(node, prefix):
        for key, value in node.items():
            if isinstance(value, dict):
                walk(value, f"{prefix}{key}.")
            elif not key.startswith("_"):
                out[prefix + key] = value if not isinstance(value, list) else str(value)

    walk(run_config(cfg), "")
    return out | {"data.name": HydraConfig.get().runtime.choices.data}


def build_loggers(cfg: DictConfig, run_dir: Path) -> list:
    """The Lightning loggers of conf/logger; W&B keeps one run id per run dir, so a resumed run continues it."""
    loggers = []
    for node in cfg.logger.values():
        if "Wandb" not in node._target_:
            loggers.append(instantiate(node))
            continue
        id_file = run_dir / "wandb_id"
        if not id_file.is_file():
            atomic_write(id_file, uuid.uuid4().hex[:12].encode())  # any [a-z0-9] string is a valid W&B id
        bits = cfg.quant.bits
        tags = [cfg.model.name, HydraConfig.get().runtime.choices.data, f"seed{cfg.seed}"]
        tags += ["fp"] if bits is None else [cfg.ste.name, f"a{bits}"]
        weights = weight_token(cfg.wquant.name, cfg.wquant.bits)
        tags += [f"w{weights}"] if weights else []  # w1 binary, wt ternary, wk uniform; float weights: none
        logger = instantiate(node, id=id_file.read_text().strip(), resume="allow", tags=tags)
        logger.log_hyperparams(flat_config(cfg))
        loggers.append(logger)
    return loggers


def finish_wandb(loggers) -> None:
    """Close the W&B run so the next job of a multirun starts its own."""
    if any(isinstance(logger, WandbLogger) for logger in loggers):
        import wandb

        wandb.finish()


def write_summary(cfg: DictConfig, trainer: pl.Trainer, module: STEModule, run_dir: Path) -> dict:
    """Final and best metrics, status and the run's identity, as summary.json (NaN becomes null).

    wall_time_s adds up every start of the run (each up to its last checkpoint: the module keeps the sum).
    """
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    choices = HydraConfig.get().runtime.choices
    summary = identity(cfg) | {
        "experiment": choices.get("experiment"),
        "data": choices.data,
        "epochs": trainer.current_epoch,
        "status": "diverged" if module.diverged else "finished",
        "reason": module.diverged_reason,
        "diverged": module.diverged,
        "train_loss": finite(metrics.get("train/loss")),
        "val_loss": finite(metrics.get("val/loss")),
        "val_acc": finite(metrics.get("val/acc")),
        "val_acc_best": finite(module.best["val/acc_best"]),
        "best_epoch": module.best["val/acc_best_epoch"] or None,
        "population_loss": finite(metrics.get("val/population_loss")),
        "epoch_time_s": finite(metrics.get("time/epoch_s")),
        "wall_time_s": module.wall_time,
        "init_checkpoint": cfg.init.checkpoint,
        "checkpoint": str(run_dir / "checkpoints" / "last.ckpt"),
    }
    atomic_write(run_dir / "summary.json", json.dumps(summary, indent=2).encode())
    log.info("%s %s: val/acc %s (best %s at epoch %s)", cfg.run_name, summary["status"], summary["val_acc"],
             summary["val_acc_best"], summary["best_epoch"])  # fmt: skip
    return summary


def identity(cfg: DictConfig) -> dict:
    """What names a run in summary.json, also for a job that failed before training."""
    return {
        "run_name": cfg.get("run_name"),
        "tag": cfg.get("tag"),
        "model": OmegaConf.select(cfg, "model.name"),
        "ste": OmegaConf.select(cfg, "ste.name"),
        "bits": OmegaConf.select(cfg, "quant.bits"),
        "alpha_mode": OmegaConf.select(cfg, "quant.alpha_mode"),
        "weights": weight_token(
            OmegaConf.select(cfg, "wquant.name") or "fp", OmegaConf.select(cfg, "wquant.bits")
        ),
        "seed": cfg.get("seed"),
        "train_subset": OmegaConf.select(cfg, "data.train_subset"),
        "val_subset": OmegaConf.select(cfg, "data.val_subset"),
        "max_epochs": OmegaConf.select(cfg, "trainer.max_epochs"),
    }


def record_failure(cfg: DictConfig, run_dir: Path, message: str) -> None:
    """A sweep job that failed: summary.json with status ``failed`` and the reason, so the sweep can go on."""
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        summary = identity(cfg)
    except Exception:  # noqa: BLE001 - a config too broken to read still gets its failure recorded
        summary = {}
    summary |= {"status": "failed", "reason": message, "diverged": False}
    atomic_write(run_dir / "summary.json", json.dumps(summary, indent=2).encode())


def remove_if_empty(run_dir: Path) -> None:
    """Drop a run dir that holds only Hydra's own files (.hydra/, train.log): a rejected input leaves nothing."""
    if run_dir.is_dir() and all(p.name in (".hydra", "train.log") for p in run_dir.iterdir()):
        shutil.rmtree(run_dir)


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    """Command line entry. A bad input ends a single run with one line, before any file is written; in a
    sweep, a failed job records ``failed`` and its reason in its run dir and the sweep goes on
    (``RunChecks`` exits non-zero at the end). Returns the best val top-1 (for sweepers)."""
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        return train(cfg)["val_acc_best"]
    except (ConfigError, SaveError) as err:
        message = f"error: {err}"
    except Exception as err:  # a crash mid-run: the traceback goes to the job's log
        if HydraConfig.get().mode != RunMode.MULTIRUN:
            raise
        log.error(traceback.format_exc())
        message = f"error: crashed: {type(err).__name__}: {err}"
    if HydraConfig.get().mode != RunMode.MULTIRUN:
        remove_if_empty(run_dir)
        sys.exit(message)
    log.error(message)
    record_failure(cfg, run_dir, message)
    return None


class RunChecks(Callback):
    """Hydra callback: an output dir that cannot be made is one line before anything runs; at the end of a
    multirun, the failed jobs are named and the exit code is non-zero."""

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        make_dir(config.hydra.run.dir)

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        make_dir(config.hydra.sweep.dir)
        self.start = time.time()

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        sweep = Path(config.hydra.sweep.dir)
        failed, total = [], 0
        for path in sorted(sweep.glob("*/summary.json")):
            if path.stat().st_mtime < self.start:
                continue  # a run of an earlier multirun in the same dir (the pipeline reuses stage dirs)
            total += 1
            if read_json(path).get("status") == "failed":
                failed.append(path.parent.name)
        if failed:
            sys.exit(f"error: {len(failed)} of {total} jobs failed: {', '.join(failed)}")


def make_dir(path: str) -> None:
    try:
        Path(path).mkdir(parents=True, exist_ok=True)
    except OSError as err:
        sys.exit(f"error: cannot create the output dir {path}: {err.strerror or err}")


if __name__ == "__main__":
    main()
