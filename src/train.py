"""Train one run: ``python -m src.train ste=relu quant.bits=4``; sweep with ``-m ste=identity,relu quant.bits=2,4``.

Every run directory holds config.yaml (resolved), provenance.json, metrics.csv, checkpoints/ and summary.json.
"""

from __future__ import annotations

import json
import math
import sys
import time
import warnings
from pathlib import Path

import hydra
import pytorch_lightning as pl
import torch
import wandb
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.loggers import WandbLogger

from src.config import ConfigError, register_resolvers, validate
from src.module import STEModule
from src.provenance import provenance

register_resolvers()
# config.yaml and provenance.json share the run dir with metrics.csv on purpose; CSVLogger only replaces its own file
warnings.filterwarnings("ignore", message="Experiment logs directory .* exists and is not empty")


def train(cfg: DictConfig) -> dict:
    """Train the run ``cfg`` describes; return its final metrics (also written to <run dir>/summary.json)."""
    validate(cfg)
    run_dir = Path(cfg.paths.output_dir)
    write_run_files(cfg, run_dir)
    pl.seed_everything(cfg.seed, workers=True)
    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()  # a missing or corrupt dataset fails here, before anything is built
    act = instantiate(cfg.quant)
    model = instantiate(
        cfg.model, act=act, in_shape=datamodule.input_shape, num_classes=datamodule.num_classes
    )
    check_input(model, datamodule.input_shape, cfg.model.name)
    module = STEModule(
        model,
        instantiate(cfg.optimizer),
        instantiate(cfg.scheduler),
        datamodule.num_classes,
        config=run_config(cfg),
    )
    if cfg.init.checkpoint:
        load_weights(module, cfg.init.checkpoint)
    loggers = [instantiate(c) for c in cfg.logger.values()]
    callbacks = [instantiate(c) for c in cfg.callbacks.values() if c]
    trainer = instantiate(cfg.trainer, logger=loggers or False, callbacks=callbacks)
    start = time.perf_counter()
    try:
        if (
            not cfg.resume
        ):  # the starting point's val metrics: the CSV's step-0 row (Figures 2 and 4 start there)
            trainer.validate(module, datamodule=datamodule, verbose=False)
        trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.resume)
    finally:
        finish_wandb(loggers)
    return write_summary(cfg, trainer, module, run_dir, time.perf_counter() - start)


def run_config(cfg: DictConfig) -> dict:
    """The resolved config without Hydra's own node: what config.yaml and the checkpoint's hparams hold."""
    container = OmegaConf.to_container(cfg, resolve=True)
    container.pop("hydra", None)
    return container


def write_run_files(cfg: DictConfig, run_dir: Path) -> None:
    """config.yaml (resolved) and provenance.json (commit, versions, hardware, data source) in the run dir."""
    run_dir.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(OmegaConf.create(run_config(cfg)), run_dir / "config.yaml")
    record = provenance() | {
        "data_root": str(Path(cfg.paths.data_dir).resolve()),
        "data_checksums_verified": cfg.data.get("verify_checksums", None),
    }
    (run_dir / "provenance.json").write_text(json.dumps(record, indent=2))


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

    α follows this run's quant config: a checkpoint's α (another bit width, or none for FP) is not loaded.
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file is the same user error
        raise ConfigError(
            f"init.checkpoint {path} is not a readable checkpoint: {str(err).splitlines()[0]}"
        ) from None
    state = {k: v for k, v in state.get("state_dict", state).items() if not k.endswith(".alpha")}
    own = {k for k in module.state_dict() if not k.endswith(".alpha")}
    if set(state) != own:
        raise ConfigError(
            f"init.checkpoint {path} does not fit model={module.hparams.config['model']['name']}: "
            f"{len(own - set(state))} missing and {len(set(state) - own)} unexpected tensors"
        )
    try:
        module.load_state_dict(state, strict=False)
    except RuntimeError as err:
        raise ConfigError(f"init.checkpoint {path}: {str(err).splitlines()[-1].strip()}") from None


def finish_wandb(loggers) -> None:
    """Close the W&B run so the next job of a multirun starts its own."""
    if any(isinstance(logger, WandbLogger) for logger in loggers):
        wandb.finish()


def write_summary(
    cfg: DictConfig, trainer: pl.Trainer, module: STEModule, run_dir: Path, wall: float
) -> dict:
    """Final metrics and the run's identity, as summary.json (NaN becomes null; ``diverged`` says why)."""
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    finite = lambda key: metrics[key] if math.isfinite(metrics.get(key, math.nan)) else None  # noqa: E731
    choices = HydraConfig.get().runtime.choices
    summary = {
        "run_name": cfg.run_name,
        "experiment": choices.get("experiment"),
        "tag": cfg.tag,
        "model": cfg.model.name,
        "data": choices.data,
        "ste": cfg.ste.name,
        "bits": cfg.quant.bits,
        "alpha_mode": cfg.quant.alpha_mode,
        "seed": cfg.seed,
        "train_subset": cfg.data.get("train_subset"),
        "epochs": trainer.current_epoch,
        "max_epochs": cfg.trainer.max_epochs,
        "diverged": module.diverged,
        "train_loss": finite("train/loss"),
        "val_loss": finite("val/loss"),
        "val_acc": finite("val/acc"),
        "population_loss": finite("val/population_loss"),
        "epoch_time_s": finite("time/epoch_s"),
        "wall_time_s": wall,
        "init_checkpoint": cfg.init.checkpoint,
        "checkpoint": str(run_dir / "checkpoints" / "last.ckpt"),
    }
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> None:
    """Command line entry: a bad config or dataset ends the job with one line, before training."""
    try:
        train(cfg)
    except (ConfigError, FileNotFoundError) as err:
        sys.exit(f"error: {err}")


if __name__ == "__main__":
    main()
