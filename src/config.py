"""Config helpers: OmegaConf resolvers used by conf/, and validation that turns bad input into one clear line."""

from __future__ import annotations

import uuid
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from src.models import MODELS
from src.quant import get_ste, resolve_alpha
from src.quant.quantizer import ALPHA_MODES, check_bits


class ConfigError(ValueError):
    """A bad run configuration, reported in one line before any work starts."""


def run_name(model: str, data: str, bits, ste: str, seed: int, tag=None) -> str:
    """<model>-<data>-<ste>-<b>bit-s<seed>[-<tag>]; the activation part is ``fp`` for a float ReLU."""
    activation = "fp" if bits is None else f"{ste}-{bits}bit"
    return f"{model}-{data}-{activation}-s{seed}" + (f"-{tag}" if tag else "")


def sweep_group() -> str | None:
    """The W&B group of a multirun job: its sweep directory's name (None for a single run)."""
    hydra = HydraConfig.get()
    return Path(hydra.sweep.dir).name if hydra.mode == RunMode.MULTIRUN else None


def register_resolvers() -> None:
    """Resolvers for conf/: ${run_name:...}, ${sweep_group:} and ${uid:} (6 hex chars, cached so that a run,
    and every job of a sweep, sees one value)."""
    if not OmegaConf.has_resolver("run_name"):
        OmegaConf.register_new_resolver("run_name", run_name)
        OmegaConf.register_new_resolver("sweep_group", sweep_group)
        OmegaConf.register_new_resolver("uid", lambda: uuid.uuid4().hex[:6], use_cache=True)


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def _wrap(check, *args, **kwargs):
    """Run a library check, re-raising its ValueError as a ConfigError naming the config key."""
    try:
        return check(*args, **kwargs)
    except ValueError as err:
        raise ConfigError(str(err)) from None


def validate(cfg: DictConfig) -> None:
    """Check everything a run needs before any work starts; raise ConfigError with one line otherwise."""
    _check(isinstance(cfg.seed, int) and cfg.seed >= 0, f"seed must be an integer >= 0, got {cfg.seed!r}")
    validate_activation(cfg)
    _check(
        cfg.model.name in MODELS,
        f"unknown model {cfg.model.name!r}; valid names: {', '.join(sorted(MODELS))}",
    )
    opt = cfg.optimizer
    _check(opt.lr > 0, f"optimizer.lr must be > 0, got {opt.lr}")
    _check(
        opt.get("weight_decay", 0) >= 0, f"optimizer.weight_decay must be >= 0, got {opt.get('weight_decay')}"
    )
    _check(
        0 <= opt.get("momentum", 0) < 1, f"optimizer.momentum must lie in [0, 1), got {opt.get('momentum')}"
    )
    _check(cfg.trainer.max_epochs >= 1, f"trainer.max_epochs must be >= 1, got {cfg.trainer.max_epochs}")
    _check(cfg.data.batch_size >= 1, f"data.batch_size must be >= 1, got {cfg.data.batch_size}")
    for key in ("init.checkpoint", "resume"):
        path = OmegaConf.select(cfg, key)
        _check(path is None or Path(path).is_file(), f"{key}: no checkpoint file at {path}")
    two_layer, gaussian = cfg.model.name == "two_layer", "GaussianDataModule" in cfg.data._target_
    _check(two_layer == gaussian, "model=two_layer goes with data=gaussian (and only with it)")


def validate_activation(cfg: DictConfig) -> None:
    """bits, alpha, alpha_mode and the STE with its hyper-parameters (conf/quant, conf/ste)."""
    q = cfg.quant
    _check(
        q.alpha_mode in ALPHA_MODES, f"quant.alpha_mode must be one of {ALPHA_MODES}, got {q.alpha_mode!r}"
    )
    ste_args = {k: v for k, v in cfg.ste.items() if k != "_target_"}
    _wrap(get_ste, **ste_args)
    if q.bits is None:  # full precision: no quantizer to check
        return
    _wrap(check_bits, q.bits)
    _wrap(resolve_alpha, q.alpha, q.bits)
    if cfg.model.name == "two_layer":
        _check(
            q.bits == 1 and q.alpha == 1.0, "model=two_layer needs quant=binary (σ = 1{x>0}: bits 1, alpha 1)"
        )
