"""One group of sweep jobs trained as a stack, from their composed configs to each job's run files."""

from __future__ import annotations

import logging

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from src.runs import read_json, write_json
from src.stacked.fit import Slice, fit, prepare, share_data
from src.stacked.plan import use
from src.train import build, build_loggers, finish_wandb, record_start, write_summary

log = logging.getLogger(__name__)


def device_and_precision(cfg: DictConfig) -> tuple[torch.device, object]:
    """The device and precision plugin of the run's own Lightning Trainer (conf/trainer: the device is never named
    here); building it also applies its ``deterministic`` setting, as for the run alone."""
    trainer = instantiate(cfg.trainer, logger=False, callbacks=[], enable_progress_bar=False)
    return trainer.strategy.root_device, trainer.precision_plugin


def build_slices(cfgs: list[DictConfig]) -> list[Slice]:
    """Each job built exactly as src.train builds it alone (checks, seed, data, model, init checkpoint)."""
    slices = []
    for cfg in cfgs:
        run_dir, resume, datamodule, module = build(use(cfg))
        slices.append(Slice(cfg, run_dir, datamodule, module, resume))
    return slices


def note(slices: list[Slice], k: int) -> dict:
    """What provenance.json records of the stack a start ran in."""
    return {"k": k, "jobs": [s.run_dir.name for s in slices], "launcher": "hydra/launcher=stacked"}


def record(s: Slice, stack_note: dict) -> None:
    """config.yaml and provenance.json as src.train writes them, with this start's stack in its entry."""
    record_start(use(s.cfg), s.run_dir, resumed=bool(s.resume))
    path = s.run_dir / "provenance.json"
    prov = read_json(path)
    prov["starts"][-1]["stack"] = stack_note
    prov.setdefault("stack", stack_note)  # the first start's, as the rest of the top-level record
    write_json(path, prov)


def finish(s: Slice) -> None:
    """The slice's summary.json (src.train's writer), and its rows to its W&B run when logger=wandb."""
    s.summary = write_summary(use(s.cfg), s.trainer, s.module, s.run_dir)
    loggers = build_loggers(s.cfg, s.run_dir)
    try:
        for row in s.rows:
            for logger in loggers:
                logger.log_metrics(
                    {k: v for k, v in row.items() if k not in ("epoch", "step")}, step=int(row["step"])
                )
    finally:
        finish_wandb(loggers)


def train_built(slices: list[Slice]) -> None:
    """Train built slices (one group of plan.plan) as stacks; each slice's summary lands in ``slice.summary``.

    Slices cut off at different epochs (a killed group resumed after some ran alone) form one stack per epoch.
    """
    device, precision = device_and_precision(slices[0].cfg)
    fixed_alpha = slices[0].cfg.quant.alpha_mode == "fixed"
    share_data(slices, device)
    for s in slices:
        prepare(s, device, precision, fixed_alpha)
    for start in sorted({s.start_epoch for s in slices}):
        part = [s for s in slices if s.start_epoch == start]
        for s in part:
            record(s, note(part, len(part)))
        fit(part, device, precision, fixed_alpha, on_stop=finish)


def train_group(cfgs: list[DictConfig]) -> list[dict]:
    """Build and train the jobs ``cfgs`` as stacks (what the launcher does with a group); their summaries."""
    slices = build_slices(cfgs)
    train_built(slices)
    return [s.summary for s in slices]
