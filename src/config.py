"""Validation of a run config: every check that turns bad input into one clear line before any work starts.

Run names and conf/'s resolvers live in src/naming.py, what ``resume`` and checkpoints must be in src/resume.py.
"""

from __future__ import annotations

import copy
import logging
import math
import warnings

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict, read_write

from src.errors import ConfigError
from src.models import COMPILE_MODES, MODELS
from src.naming import check_name, check_tag
from src.plugins import load_plugins
from src.quant import get_ste, resolve_alpha
from src.quant.quantizer import ALPHA_MODES, check_bits
from src.quant.weights import weight_quantizer
from src.resume import check_checkpoint, check_resume_target
from src.targets import HYDRA_KEYS, build_partial, check_arguments, check_keys, config_error, construct

# Root keys a run config may hold: conf/train.yaml's and Hydra's.
ROOT_KEYS = frozenset(
    {"seed", "tag", "tags", "run_name", "paths", "init", "resume", "callbacks", "hydra"}
    | {"model", "data", "ste", "quant", "wquant", "optimizer", "scheduler", "trainer", "logger"}
    | {"divergence", "share", "plugins"}
)


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
    threads, fraction = (OmegaConf.select(cfg, f"share.{k}") for k in ("threads", "gpu_memory_fraction"))
    if threads is not None:
        _integer(threads, "share.threads")
    if fraction is not None:
        _number(fraction, "share.gpu_memory_fraction")
        _check(0 < fraction <= 1, f"share.gpu_memory_fraction must lie in (0, 1], got {fraction!r}")


def validate(cfg: DictConfig) -> None:
    """Check everything a run needs before any work starts; raise ConfigError with one line otherwise."""
    load_plugins(cfg.get("plugins"))  # first: what they register (STEs, models) is checked below by name
    unknown = sorted(set(cfg) - ROOT_KEYS)
    _check(not unknown, f"unknown root key(s) {', '.join(unknown)}; valid: {', '.join(sorted(ROOT_KEYS))}")
    _check(
        _is_int(cfg.seed) and 0 <= cfg.seed <= SEED_MAX,
        f"seed must be an integer in [0, {SEED_MAX}], got {cfg.seed!r}",
    )
    validate_names(cfg)
    validate_small_groups(cfg)
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
    for name, node in cfg.callbacks.items():  # their constructors check their knobs (every_n_epochs=0)
        if node:
            construct(f"callbacks.{name}", node)
    validate_trainer(cfg)
    if cfg.resume is not None:
        check_resume_target(cfg.resume)
    for key in ("init.checkpoint", "resume"):
        path = OmegaConf.select(cfg, key)
        if path is not None:
            check_checkpoint(path, key)
    two_layer, gaussian = cfg.model.name == "two_layer", "GaussianDataModule" in cfg.data._target_
    _check(two_layer == gaussian, "model=two_layer goes with data=gaussian (and only with it)")
    validate_build(cfg)


def validate_job(config: DictConfig) -> None:
    """validate() for Hydra's on_run_start, before Hydra makes the run dir and writes .hydra/ into it: the
    config as the job will see it (its output dir is hydra.run.dir), on a copy."""
    check_tag(config.get("tag"))  # named as itself, before run_name's resolver sees it
    try:
        run_dir = config.hydra.run.dir
    except Exception as err:  # noqa: BLE001 - run_name's resolver refused a name, inside OmegaConf's wrapper
        raise config_error(err) from None
    cfg = copy.deepcopy(config)  # keeps the hydra node's structured type, which HydraConfig requires
    with read_write(cfg.hydra), open_dict(cfg.hydra):
        cfg.hydra.runtime.output_dir = run_dir
    HydraConfig.instance().set_config(cfg)
    try:
        validate(cfg)
    finally:
        HydraConfig.instance().set_config(config)


def validate_build(cfg: DictConfig) -> None:
    """Build the datamodule (its constructor checks mean/std per channel and the like; it reads no file) and
    the model on its input shape, so a value only they reject (resnet depth 7) is one line, not a traceback."""
    datamodule = construct("data", cfg.data)
    act, wquant = instantiate(cfg.quant), instantiate(cfg.wquant)
    shape, classes = datamodule.input_shape, datamodule.num_classes
    construct("model", cfg.model, act=act, wquant=wquant, in_shape=shape, num_classes=classes)


SEED_MAX = 2**32 - 1  # numpy's and Lightning's seed range
# Root groups without a _target_: the keys each may hold.
SMALL_GROUPS = {
    "init": {"checkpoint"},
    "divergence": {"max_loss"},
    "share": {"threads", "gpu_memory_fraction"},
    "paths": {"data_dir", "output_dir"},
}


def validate_names(cfg: DictConfig) -> None:
    """tag and run_name become directory names: checked before any directory is made."""
    check_tag(cfg.get("tag"))
    try:
        name = cfg.run_name
    except Exception as err:  # noqa: BLE001 - the resolver's ConfigError, inside OmegaConf's wrapper
        raise config_error(err) from None
    check_name(name, "run_name")


def validate_small_groups(cfg: DictConfig) -> None:
    """init, divergence, share and paths: known keys only; divergence.max_loss a finite number > 0."""
    for group, keys in SMALL_GROUPS.items():
        node = cfg.get(group)
        _check(
            isinstance(node, DictConfig),
            f"{group} must be a group of keys ({', '.join(sorted(keys))}), got {node!r}",
        )
        unknown = sorted(set(node) - keys)
        _check(
            not unknown,
            f"unknown key(s) {', '.join(f'{group}.{k}' for k in unknown)}; valid: {', '.join(sorted(keys))}",
        )
    for key in ("paths.data_dir", "init.checkpoint", "resume"):
        value = OmegaConf.select(cfg, key)
        _check(value is None or isinstance(value, str), f"{key} must be a path, got {value!r}")
    max_loss = cfg.divergence.max_loss
    _number(max_loss, "divergence.max_loss")
    _check(max_loss > 0, f"divergence.max_loss must be > 0 (a loss above it stops the run), got {max_loss!r}")


def validate_trainer(cfg: DictConfig) -> None:
    """accelerator, devices, precision and the rest as Lightning itself checks them: a Trainer is built (and
    dropped) with no logger or callback, so e.g. trainer.accelerator=tpu or devices=0 fail here in one line."""
    # its "GPU available" lines belong to the run, not to the check
    quiet = logging.getLogger("pytorch_lightning.utilities.rank_zero")
    level = quiet.level
    quiet.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():  # its warnings (SLURM's srun hint) come once, from the run's Trainer
            warnings.simplefilter("ignore")
            construct("trainer", cfg.trainer, logger=False, callbacks=[], plugins=[])
    finally:
        quiet.setLevel(level)


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
    check_milestones(cfg.scheduler, "scheduler")
    optimizer = build_partial("optimizer", cfg.optimizer, [torch.nn.Parameter(torch.zeros(1))])
    build_partial("scheduler", cfg.scheduler, optimizer, step=True)


def check_milestones(node: DictConfig, key: str) -> None:
    """Every ``milestones`` in the scheduler (nested ones too): increasing epochs >= 1. torch takes any iterable,
    so milestones=abc would count the letters and never decay."""
    for name, value in node.items():
        if isinstance(value, DictConfig):
            check_milestones(value, f"{key}.{name}")
        elif name == "milestones":
            ok = isinstance(value, ListConfig) and all(_is_int(m) and m >= 1 for m in value)
            ok = ok and list(value) == sorted(set(value))
            _check(
                ok, f"{key}.milestones must be a list of increasing epochs >= 1, e.g. [80,140], got {value!r}"
            )


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
    check_keys(MODELS[cfg.model.name], sizes, "model", skip={"act", "in_shape", "num_classes"})
    for name, value in sizes.items():  # widths, depths, channels: a layer of -3 units is no model
        values = list(value) if isinstance(value, ListConfig) else [value]
        ok = all(_is_int(v) and v >= 1 or v == "M" for v in values)  # "M": VGG's max-pool marker
        if (
            isinstance(value, int | float | ListConfig)
            and not isinstance(value, bool)
            and name != "init_scale"
        ):
            _check(ok, f"model.{name} must be a positive integer (or a list of them), got {value!r}")
    for knob in ("channels_last", "compile"):
        value = cfg.model.get(knob, False)
        _check(isinstance(value, bool), f"model.{knob} must be true or false, got {value!r}")
    mode = cfg.model.get("compile_mode", "default")
    _check(mode in COMPILE_MODES, f"model.compile_mode must be one of {COMPILE_MODES}, got {mode!r}")


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
