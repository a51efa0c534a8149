"""Config helpers: OmegaConf resolvers used by conf/, and validation that turns bad input into one clear line."""

from __future__ import annotations

import inspect
import math
import uuid
import zipfile
from pathlib import Path

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import get_object, instantiate
from omegaconf import DictConfig, OmegaConf

from src.models import COMPILE_MODES, MODELS
from src.quant import get_ste, resolve_alpha
from src.quant.quantizer import ALPHA_MODES, check_bits
from src.quant.weights import weight_quantizer, weight_token


class ConfigError(ValueError):
    """A bad run configuration, reported in one line before any work starts."""


def run_name(model: str, data: str, bits, ste: str, seed: int, tag=None, wquant="fp", wbits=None) -> str:
    """<model>-<data>-<ste>-<b>bit-s<seed>[-<tag>]; the activation part is ``fp`` for a float ReLU. Quantized
    weights name both widths instead of <b>bit: w2a2, w1a2 (binary), wta2 (ternary), w4afp (float activations)."""
    weights = weight_token(wquant, wbits)
    if weights is None:
        activation = "fp" if bits is None else f"{ste}-{bits}bit"
    else:
        activation = f"w{weights}afp" if bits is None else f"{ste}-w{weights}a{bits}"
    return f"{model}-{data}-{activation}-s{seed}" + (f"-{tag}" if tag else "")


def sweep_group() -> str | None:
    """The W&B group of a multirun job: <parent>/<sweep dir>, e.g. mnist_paper/table1 for a pipeline stage
    (None for a single run)."""
    hydra = HydraConfig.get()
    sweep = Path(hydra.sweep.dir)
    return f"{sweep.parent.name}/{sweep.name}" if hydra.mode == RunMode.MULTIRUN else None


def resume_dir(resume, default: str) -> str:
    """hydra.run.dir: the run dir of ``resume`` (a run dir, or checkpoints/<file>.ckpt inside one), else default."""
    if not resume:
        return default
    path = Path(str(resume))
    return str(path.parent.parent if path.suffix == ".ckpt" and path.parent.name == "checkpoints" else path)


def register_resolvers() -> None:
    """Resolvers for conf/: ${run_name:...}, ${sweep_group:} and ${uid:} (6 hex chars, cached so that a run,
    and every job of a sweep, sees one value)."""
    if not OmegaConf.has_resolver("run_name"):
        OmegaConf.register_new_resolver("run_name", run_name)
        OmegaConf.register_new_resolver("sweep_group", sweep_group)
        OmegaConf.register_new_resolver("resume_dir", resume_dir)
        OmegaConf.register_new_resolver("uid", lambda: uuid.uuid4().hex[:6], use_cache=True)


# Root keys a run config may hold: conf/train.yaml's and Hydra's.
ROOT_KEYS = frozenset(
    {"seed", "tag", "run_name", "paths", "init", "resume", "callbacks", "hydra"}
    | {"model", "data", "ste", "quant", "wquant", "optimizer", "scheduler", "trainer", "logger"}
    | {"divergence", "share"}
)
# Hydra's own keys in a node with a _target_: not arguments of the target.
HYDRA_KEYS = frozenset({"_target_", "_partial_", "_recursive_", "_convert_", "_args_"})


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def _wrap(check, *args, **kwargs):
    """Run a library check, re-raising its ValueError as a ConfigError naming the config key."""
    try:
        return check(*args, **kwargs)
    except ValueError as err:
        raise ConfigError(str(err)) from None


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)  # YAML's true is an int to Python


def _integer(value, key: str, minimum: int = 1) -> None:
    _check(_is_int(value), f"{key} must be an integer, got {value!r}")
    _check(value >= minimum, f"{key} must be >= {minimum}, got {value!r}")


def _number(value, key: str) -> None:
    """A finite int or float: `optimizer.lr=abc` arrives as a string and `lr=inf` as a float."""
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    _check(ok, f"{key} must be a finite number, got {value!r}")


def validate_share(cfg: DictConfig) -> None:
    """share.threads a positive integer, share.gpu_memory_fraction in (0, 1]; null leaves torch's default."""
    threads, fraction = (
        OmegaConf.select(cfg, "share.threads"),
        OmegaConf.select(cfg, "share.gpu_memory_fraction"),
    )
    if threads is not None:
        _integer(threads, "share.threads")
    if fraction is not None:
        _number(fraction, "share.gpu_memory_fraction")
        _check(0 < fraction <= 1, f"share.gpu_memory_fraction must lie in (0, 1], got {fraction!r}")


def validate(cfg: DictConfig) -> None:
    """Check everything a run needs before any work starts; raise ConfigError with one line otherwise."""
    unknown = sorted(set(cfg) - ROOT_KEYS)
    _check(not unknown, f"unknown root key(s) {', '.join(unknown)}; valid: {', '.join(sorted(ROOT_KEYS))}")
    _check(_is_int(cfg.seed) and cfg.seed >= 0, f"seed must be an integer >= 0, got {cfg.seed!r}")
    validate_activation(cfg)
    validate_weights(cfg)
    validate_model(cfg)
    validate_optimizer(cfg)
    _integer(cfg.trainer.max_epochs, "trainer.max_epochs")
    validate_data(cfg)
    validate_share(cfg)
    check_arguments(cfg.trainer, "trainer")
    check_arguments(cfg.quant, "quant", strict=True)  # STE hyper-parameters belong in conf/ste
    for group in ("logger", "callbacks"):
        for name, node in cfg[group].items():
            if node:  # a logger or callback switched off is null
                check_arguments(node, f"{group}.{name}")
    for key in ("init.checkpoint", "resume"):
        path = OmegaConf.select(cfg, key)
        if path is not None:
            check_checkpoint(path, key)
    two_layer, gaussian = cfg.model.name == "two_layer", "GaussianDataModule" in cfg.data._target_
    _check(two_layer == gaussian, "model=two_layer goes with data=gaussian (and only with it)")


def validate_optimizer(cfg: DictConfig) -> None:
    """lr, weight decay and momentum are finite numbers in range; then build the optimizer and scheduler on a
    dummy parameter, so an unknown key (+optimizer.foo=1) or a value torch rejects fails here, not in fit."""
    opt = cfg.optimizer
    for name in ("lr", "weight_decay", "momentum"):
        if name in opt:
            _number(opt[name], f"optimizer.{name}")
    _check(opt.lr > 0, f"optimizer.lr must be > 0, got {opt.lr}")
    _check(
        opt.get("weight_decay", 0) >= 0, f"optimizer.weight_decay must be >= 0, got {opt.get('weight_decay')}"
    )
    _check(
        0 <= opt.get("momentum", 0) < 1, f"optimizer.momentum must lie in [0, 1), got {opt.get('momentum')}"
    )
    check_arguments(cfg.optimizer, "optimizer")
    check_arguments(cfg.scheduler, "scheduler")
    optimizer = _build("optimizer", cfg.optimizer, [torch.nn.Parameter(torch.zeros(1))])
    _build("scheduler", cfg.scheduler, optimizer)


def _build(key: str, node: DictConfig, argument):
    """instantiate(node)(argument), with whatever the constructor rejects as one line naming the group."""
    try:
        return instantiate(node)(argument)
    except Exception as err:  # noqa: BLE001 - TypeError, ValueError, Hydra's wrappers: all the user's input
        raise ConfigError(f"{key}: {' '.join(str(err).split())}") from None


def validate_data(cfg: DictConfig) -> None:
    """Sizes are integers >= 1 (null subsets mean 'all') and every key is an argument of the datamodule."""
    for name in ("batch_size", "val_batch_size", "batches_per_epoch", "val_samples", "m", "n"):
        if name in cfg.data:
            _integer(cfg.data[name], f"data.{name}")
    for name in ("train_subset", "val_subset"):  # whether they fit the dataset is known once it is read
        if cfg.data.get(name) is not None:
            _integer(cfg.data[name], f"data.{name}")
    if "holdout" in cfg.data:  # 0: validate on the test split; whether N fits is known once the data is read
        _integer(cfg.data.holdout, "data.holdout", minimum=0)
    check_arguments(cfg.data, "data")


def validate_model(cfg: DictConfig) -> None:
    """A known model, its architecture's own size arguments, and build_model's speed knobs."""
    _check(
        cfg.model.name in MODELS,
        f"unknown model {cfg.model.name!r}; valid names: {', '.join(sorted(MODELS))}",
    )
    knobs = {"channels_last", "compile", "compile_mode"}  # build_model's, not the architecture's
    sizes = {k: cfg.model[k] for k in cfg.model if k not in HYDRA_KEYS | {"name"} | knobs}
    _check_keys(MODELS[cfg.model.name], sizes, "model", skip={"act", "in_shape", "num_classes"})
    for knob in ("channels_last", "compile"):
        value = cfg.model.get(knob, False)
        _check(isinstance(value, bool), f"model.{knob} must be true or false, got {value!r}")
    mode = cfg.model.get("compile_mode", "default")
    _check(mode in COMPILE_MODES, f"model.compile_mode must be one of {COMPILE_MODES}, got {mode!r}")


def check_arguments(node: DictConfig, key: str, strict: bool = False) -> None:
    """Every key of a `_target_` node is an argument of its target (Hydra would fail later, in many lines);
    `strict`: also when the target takes **kwargs (QuantReLU passes them to an STE built elsewhere)."""
    try:
        target = get_object(node._target_)
    except Exception as err:  # noqa: BLE001 - an unimportable target is the user's typo too
        raise ConfigError(f"{key}._target_: cannot import {node._target_!r} ({type(err).__name__})") from None
    _check_keys(target, {k: node[k] for k in node if k not in HYDRA_KEYS}, key, strict=strict)


def _check_keys(target, values: dict, key: str, skip=frozenset(), strict: bool = False) -> None:
    """No unknown keys (unless the target takes **kwargs and not `strict`); a numeric argument gets a number."""
    params = inspect.signature(target).parameters
    named = {name: p for name, p in params.items() if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
    unknown = sorted(set(values) - set(named))
    if unknown and (strict or len(named) == len(params)):
        valid = [name for name in named if name not in skip]
        listed = (
            ", ".join(valid) if len(valid) <= 16 else f"see {getattr(target, '__name__', target)}'s arguments"
        )
        raise ConfigError(f"unknown key(s) {', '.join(f'{key}.{k}' for k in unknown)}; valid: {listed}")
    for name, value in values.items():
        default = named[name].default if name in named else None
        # a string where the default is a number: `scheduler.gamma=abc` would fail only at the first step
        if (
            isinstance(default, int | float)
            and not isinstance(default, bool)
            and isinstance(value, str | bool)
            and "str" not in str(named[name].annotation)  # e.g. QuantReLU's alpha: a number or "lloyd"
        ):
            raise ConfigError(f"{key}.{name} must be a number like its default {default}, got {value!r}")


def checkpoint_file(path: str) -> Path:
    """The checkpoint file `path` names: the file itself, or a run directory's checkpoints/last.ckpt."""
    path = Path(path).expanduser()
    return path / "checkpoints" / "last.ckpt" if path.is_dir() else path


def check_checkpoint(path: str, key: str) -> dict:
    """Load a checkpoint (weights_only=True: Lightning's own load as tensors and plain containers) and return
    it; a missing, truncated or foreign file, or one without a state_dict, is a one-line ConfigError."""
    file = checkpoint_file(path)
    if Path(path).is_dir():
        _check(file.is_file(), f"{key}: {path} is a directory without checkpoints/last.ckpt")
    _check(file.is_file(), f"{key}: no checkpoint file at {path}")
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file is the same user error
        # torch says "Invalid argument" for a truncated archive: name the likely cause instead
        reason = "truncated, or not a torch.save file" if not zipfile.is_zipfile(file) else str(err)
        raise ConfigError(f"{key}: {file} is not a readable checkpoint ({reason.splitlines()[0]})") from None
    _check(
        isinstance(state, dict) and isinstance(state.get("state_dict"), dict),
        f"{key}: {file} holds no state_dict (not a checkpoint of this project's runs)",
    )
    return state


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


def validate_weights(cfg: DictConfig) -> None:
    """conf/wquant: known keys, then the quantizer's own checks (name, bits, scale, ste, first_last)."""
    check_arguments(cfg.wquant, "wquant", strict=True)
    wq = _wrap(weight_quantizer, **{k: v for k, v in cfg.wquant.items() if k not in HYDRA_KEYS})
    _check(
        wq.name == "fp" or cfg.model.name != "two_layer",
        "model=two_layer has no conv or linear layer to quantize: it goes with wquant=fp",
    )
