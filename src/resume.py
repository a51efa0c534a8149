"""Resuming a run: what ``resume`` may name, which checkpoint a start continues from, and the checks that it
continues the same run (the config's identity keys match) or, for a finished run, trains it longer."""

from __future__ import annotations

import zipfile
from pathlib import Path

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf

from src.errors import ConfigError
from src.runs import DONE, read_json
from src.runs.job import run_config

# What resume must match; the keys a user types come before the groups that copy them (quant.ste is ${ste},
# data.seed ${seed}), so a mismatch is named by the key that was typed.
IDENTITY = ("seed", "ste", "model", "wquant", "tag", "init", "quant", "data", "optimizer", "scheduler")


def check_resume_target(resume: str) -> None:
    """``resume`` names an existing run dir or a checkpoint inside one (<run dir>/checkpoints/<file>.ckpt):
    the run continues in that dir, so nothing else is accepted, and nothing is created for a wrong path."""
    path = Path(resume).expanduser()
    if not path.exists():
        raise ConfigError(f"resume: no run dir or checkpoint at {resume}")
    if path.is_file() and path.parent.name != "checkpoints":
        raise ConfigError(
            f"resume: {resume} is not inside a run dir (<run dir>/checkpoints/<file>.ckpt) and a resumed run "
            f"continues in its own dir; to start a new run from its weights use init.checkpoint={resume}"
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


def checkpoint_file(path: str) -> Path:
    """The checkpoint file `path` names: the file itself, or a run directory's checkpoints/last.ckpt."""
    path = Path(path).expanduser()
    return path / "checkpoints" / "last.ckpt" if path.is_dir() else path


def check_checkpoint(path: str, key: str) -> dict:
    """Load a checkpoint (weights_only=True: Lightning's own load as tensors and plain containers) and return
    it; a missing, truncated or foreign file, or one without a state_dict, is a one-line ConfigError."""
    file = checkpoint_file(path)
    if Path(path).is_dir() and not file.is_file():
        raise ConfigError(f"{key}: {path} is a directory without checkpoints/last.ckpt")
    if not file.is_file():
        raise ConfigError(f"{key}: no checkpoint file at {path}")
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file is the same user error
        # torch says "Invalid argument" for a truncated archive: name the likely cause instead
        reason = "truncated, or not a torch.save file" if not zipfile.is_zipfile(file) else str(err)
        raise ConfigError(f"{key}: {file} is not a readable checkpoint ({reason.splitlines()[0]})") from None
    if not (isinstance(state, dict) and isinstance(state.get("state_dict"), dict)):
        raise ConfigError(f"{key}: {file} holds no state_dict (not a checkpoint of this project's runs)")
    return state


def resume_checkpoint(cfg: DictConfig, run_dir: Path) -> str | None:
    """The checkpoint to continue from: ``resume`` (a run dir or a .ckpt), else this run dir's own last.ckpt
    when an earlier start of the same run was cut off; None for a fresh run. The config must match the run's.
    A finished run is continued only by ``resume`` with a larger trainer.max_epochs (it trains longer)."""
    summary = read_json(run_dir / "summary.json")
    status = summary.get("status", "finished" if summary else None)
    if status == "finished" and cfg.resume:
        check_extends(run_dir, summary.get("max_epochs"), cfg.trainer.max_epochs)
    elif status in DONE:
        raise ConfigError(f"{run_dir} already holds a {status} run (summary.json)")
    path = checkpoint_file(cfg.resume or str(run_dir))
    if not path.is_file():
        if cfg.resume:
            raise ConfigError(f"resume: no checkpoint at {path}")
        return None
    new = OmegaConf.create(run_config(cfg))
    saved = run_dir / "config.yaml"
    # the run dir's config.yaml, then the checkpoint's own (a checkpoint copied in from another run)
    for where, old in (
        (saved, OmegaConf.load(saved) if saved.is_file() else None),
        (
            path,
            OmegaConf.create(
                check_checkpoint(str(path), "resume").get("hyper_parameters", {}).get("config", {})
            ),
        ),
    ):
        found = first_difference(old, new, IDENTITY) if old else None
        if found:
            key, was, now = found
            raise ConfigError(
                f"resume: {where} was trained with {key}={was!r}, this run has {key}={now!r}; "
                "repeat that run's overrides"
            )
    return str(path)


def check_extends(run_dir: Path, done: int | None, max_epochs: int) -> None:
    """A finished run's resume trains it longer: trainer.max_epochs above the epochs it was run for."""
    if done is not None and not max_epochs > done:
        raise ConfigError(
            f"resume: {run_dir} finished its {done} epochs; to train it longer set trainer.max_epochs above "
            f"{done} (got {max_epochs})"
        )
