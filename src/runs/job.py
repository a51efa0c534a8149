"""What a Hydra job's config says about its run: the config a run dir keeps, the summary fields that name the run,
and the record of a job that failed before or while training (src.train, src.tune and the launchers write it)."""

from __future__ import annotations

from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from src.quant.weights import weight_token
from src.runs.record import write_summary


def run_config(cfg: DictConfig) -> dict:
    """The resolved config without Hydra's own node: what config.yaml and the checkpoint's hparams hold."""
    container = OmegaConf.to_container(cfg, resolve=True)
    container.pop("hydra", None)
    return container


def names(cfg: DictConfig) -> dict:
    """The summary fields that name a run (also for a job that failed before training)."""
    choices = HydraConfig.get().runtime.choices if HydraConfig.initialized() else {}
    return {
        "tag": cfg.get("tag"),
        "experiment": choices.get("experiment"),
        "data": choices.get("data"),
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
        config, choices, fields = run_config(cfg), HydraConfig.get().runtime.choices, names(cfg)
    except Exception:  # noqa: BLE001 - a config too broken to read still gets its failure recorded
        config, choices, fields = {}, {}, {}
    write_summary(
        run_dir, config, choices, fields | {"status": "failed", "reason": message, "diverged": False}
    )
