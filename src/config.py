"""Config helpers: OmegaConf resolvers used by conf/, and validation that turns bad input into one clear line."""

from __future__ import annotations

import copy
import inspect
import logging
import math
import uuid
import warnings
import zipfile
from pathlib import Path

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import get_object, instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict, read_write

from src.errors import ConfigError
from src.models import COMPILE_MODES, MODELS
from src.plugins import load_plugins
from src.quant import get_ste, resolve_alpha
from src.quant.quantizer import ALPHA_MODES, check_bits
from src.quant.weights import weight_quantizer, weight_token


def run_name(model: str, data: str, bits, ste: str, seed: int, tag=None, wquant="fp", wbits=None) -> str:
    """<model>-<data>-<ste>-<b>bit-s<seed>[-<tag>]; the activation part is ``fp`` for a float ReLU. Quantized
    weights name both widths instead of <b>bit: w2a2, w1a2 (binary), wta2 (ternary), w4afp (float activations)."""
    weights = weight_token(wquant, wbits)
    if weights is None:
        activation = "fp" if bits is None else f"{ste}-{bits}bit"
    else:
        activation = f"w{weights}afp" if bits is None else f"{ste}-w{weights}a{bits}"
    name = f"{model}-{data}-{activation}-s{seed}" + (f"-{tag}" if tag else "")
    check_name(name, "run_name")  # it becomes a directory: refused here, before Hydra makes it
    return name


# A name that becomes one path component (tag, run_name): printable, no separator, no "..", no leading "." or
# "-" (hidden files, options), at most NAME_MAX characters; what else a file system refuses is its own error.
NAME_MAX = 200


def check_name(value, key: str) -> None:
    """Raise a one-line ConfigError unless ``value`` is safe as a single path component."""
    text = str(value)
    bad = (
        not text
        or len(text) > NAME_MAX
        or not text.isprintable()
        or any(c.isspace() or c in '/\\:*?"<>|' for c in text)
        or ".." in text
        or text[0] in ".-"
    )
    _check(
        not bad,
        f"{key} must be one plain name: none of / \\ : * ? \" < > |, '..', spaces or control characters, not "
        f"starting with . or -, at most {NAME_MAX} characters; got {value!r}",
    )


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
    {"seed", "tag", "tags", "run_name", "paths", "init", "resume", "callbacks", "hydra"}
    | {"model", "data", "ste", "quant", "wquant", "optimizer", "scheduler", "trainer", "logger"}
    | {"divergence", "share", "plugins"}
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


def check_tag(tag) -> None:
    """A tag (null, a string or a number) that can be part of a directory name."""
    if tag is not None:
        _check(isinstance(tag, str | int) and not isinstance(tag, bool), f"tag must be a name, got {tag!r}")
        check_name(tag, "tag")


def config_error(err: BaseException) -> ConfigError:
    """The ConfigError inside a wrapper (Hydra's instantiate, OmegaConf's resolvers), else the error's first
    line as one."""
    cause = err
    while cause is not None and not isinstance(cause, ConfigError):
        cause = cause.__cause__ or cause.__context__
    return cause or ConfigError(" ".join(str(err).split()))


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
    quiet = logging.getLogger(
        "pytorch_lightning.utilities.rank_zero"
    )  # its "GPU available" lines: in the run
    level = quiet.level
    quiet.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():  # its warnings (SLURM's srun hint) come once, from the run's Trainer
            warnings.simplefilter("ignore")
            construct("trainer", cfg.trainer, logger=False, callbacks=[], plugins=[])
    finally:
        quiet.setLevel(level)


def construct(key: str, node: DictConfig, **kwargs):
    """instantiate(node, **kwargs), with whatever the constructor rejects as one line naming ``key``."""
    try:
        return instantiate(node, **kwargs)
    except Exception as err:  # noqa: BLE001 - TypeError, ValueError, Lightning's MisconfigurationException
        cause = err.__cause__ or err  # Hydra's InstantiationException wraps the constructor's error
        if isinstance(cause, ConfigError):
            raise cause from None
        text = " ".join(str(cause).split())
        raise ConfigError(text if text.startswith(key) else f"{key}: {text}") from None


def check_resume_target(resume: str) -> None:
    """``resume`` names an existing run dir or a checkpoint inside one (<run dir>/checkpoints/<file>.ckpt):
    the run continues in that dir, so nothing else is accepted, and nothing is created for a wrong path."""
    path = Path(resume).expanduser()
    _check(path.exists(), f"resume: no run dir or checkpoint at {resume}")
    if path.is_file():
        _check(
            path.parent.name == "checkpoints",
            f"resume: {resume} is not inside a run dir (<run dir>/checkpoints/<file>.ckpt) and a resumed run "
            f"continues in its own dir; to start a new run from its weights use init.checkpoint={resume}",
        )


def first_difference(old: DictConfig, new: DictConfig, keys) -> tuple[str, object, object] | None:
    """The first leaf (dotted key) under ``keys``, in that order, whose value differs, with both values."""
    for key in keys:
        a, b = OmegaConf.select(old, key), OmegaConf.select(new, key)
        if isinstance(a, DictConfig) and isinstance(b, DictConfig):
            found = first_difference(a, b, sorted(set(a) | set(b), key=lambda k: (k != "name", str(k))))
            if found:
                return f"{key}.{found[0]}", found[1], found[2]
        elif a != b:
            plain = [
                OmegaConf.to_container(v) if isinstance(v, DictConfig | ListConfig) else v for v in (a, b)
            ]
            return key, plain[0], plain[1]
    return None


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
    optimizer = _build("optimizer", cfg.optimizer, [torch.nn.Parameter(torch.zeros(1))])
    _build("scheduler", cfg.scheduler, optimizer, step=True)


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


def _build(key: str, node: DictConfig, argument, step: bool = False):
    """instantiate(node)(argument), with whatever the constructor rejects as one line naming the group;
    ``step``: also one step of it, as a scheduler computes its lr (T_max=abc fails only there)."""
    try:
        built = instantiate(node)(argument)
        if step:
            with warnings.catch_warnings():  # "scheduler.step() before optimizer.step()": a dummy, on purpose
                warnings.simplefilter("ignore")
                built.step()
        return built
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
        # `data.augment=maybe` would be truthy: a boolean argument takes true or false
        if isinstance(default, bool) and value is not None and not isinstance(value, bool):
            raise ConfigError(f"{key}.{name} must be true or false, got {value!r}")
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
