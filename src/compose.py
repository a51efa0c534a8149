"""The training config as ``python -m src.train <overrides>`` composes it, for callers without Hydra's main:
src.tune's trials and the tests (src.train itself gets it from ``@hydra.main`` on the same tree, src.paths.CONF)."""

from __future__ import annotations

from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException
from omegaconf import DictConfig, open_dict

from src.errors import ConfigError
from src.naming import register_resolvers
from src.paths import CONF


def compose_run(overrides: list[str], run_dir: Path, number: int = 0) -> DictConfig:
    """The config ``python -m src.train <overrides>`` gets, as job ``number`` writing to run_dir, with Hydra's
    runtime set so ${hydra:...} (run_name, the output dir) resolves; an override Hydra rejects is one line."""
    register_resolvers()
    try:
        with initialize_config_dir(str(CONF), version_base="1.3", job_name="train"):
            cfg = compose("train", overrides=overrides, return_hydra_config=True)
    except HydraException as err:
        raise ConfigError(str(err).strip().splitlines()[0]) from None
    with open_dict(cfg):
        cfg.hydra.job.num = number
        cfg.hydra.runtime.output_dir = str(run_dir)
    HydraConfig.instance().set_config(cfg)
    return cfg
