"""``_target_`` nodes of a run config: their keys checked against the target's signature, and built with whatever
the constructor rejects as one line naming the config key (src.config's validation builds through these)."""

from __future__ import annotations

import inspect
import warnings

from hydra.utils import get_object, instantiate
from omegaconf import DictConfig

from src.errors import ConfigError

# Hydra's own keys in a node with a _target_: not arguments of the target.
HYDRA_KEYS = frozenset({"_target_", "_partial_", "_recursive_", "_convert_", "_args_"})


def config_error(err: BaseException) -> ConfigError:
    """The ConfigError inside a wrapper (Hydra's instantiate, OmegaConf's resolvers), else the error's first
    line as one."""
    cause = err
    while cause is not None and not isinstance(cause, ConfigError):
        cause = cause.__cause__ or cause.__context__
    return cause or ConfigError(" ".join(str(err).split()))


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


def build_partial(key: str, node: DictConfig, argument, step: bool = False):
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


def check_arguments(node: DictConfig, key: str, strict: bool = False) -> None:
    """Every key of a `_target_` node is an argument of its target (Hydra would fail later, in many lines);
    `strict`: also when the target takes **kwargs (QuantReLU passes them to an STE built elsewhere)."""
    try:
        target = get_object(node._target_)
    except Exception as err:  # noqa: BLE001 - an unimportable target is the user's typo too
        raise ConfigError(f"{key}._target_: cannot import {node._target_!r} ({type(err).__name__})") from None
    check_keys(target, {k: node[k] for k in node if k not in HYDRA_KEYS}, key, strict=strict)


def check_keys(target, values: dict, key: str, skip=frozenset(), strict: bool = False) -> None:
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
