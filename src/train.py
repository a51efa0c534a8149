"""Train one run: ``python -m src.train ste=relu quant.bits=4``; sweep with ``-m ste=identity,relu quant.bits=2,4``.

Every run directory holds config.yaml (resolved), provenance.json, metrics.csv, checkpoints/ and summary.json
(src/rundir.py). A run cut off by a kill resumes in place: ``resume=<run dir>``, or the same sweep command again;
a finished one trains longer with ``resume=<run dir> trainer.max_epochs=<more>`` (src/resume.py). Slightly over 300
lines: the run's builds, its files and Hydra's entry stay together so a whole run reads in one place.
"""

from __future__ import annotations

import logging
import math
import shutil
import sys

if __name__ == "__main__" and {"-sc", "--shell-completion"} & set(sys.argv):
    # a TAB of Hydra's completion (README: Training): answered without the torch and Lightning imports below
    from src.completion import complete

    sys.exit(complete())  # Hydra answers and returns: stop before the imports below
import time
import traceback
import uuid
from pathlib import Path

import hydra
import pytorch_lightning as pl
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.loggers import WandbLogger

from src.config import ConfigError, check_checkpoint, validate, validate_job
from src.module import STEModule, build_from_config
from src.naming import register_resolvers
from src.provenance import provenance
from src.quant.weights import weight_token
from src.resume import resume_checkpoint
from src.rundir import SaveError, atomic_write, finite
from src.runs import RunFileError, failed_runs, flatten, write_provenance
from src.runs import write_summary as write_record
from src.runs.job import names, record_failure, run_config
from src.stacked.options import check_max_stack

register_resolvers()
log = logging.getLogger(__name__)


def train(cfg: DictConfig) -> dict:
    """Train the run ``cfg`` describes; return its final metrics (also written to <run dir>/summary.json).

    Every check (config, data, model, checkpoints) comes before the first file is written.
    """
    run_dir, resume, datamodule, module = build(cfg)
    record_start(cfg, run_dir, resumed=bool(resume))
    loggers = build_loggers(cfg, run_dir)
    trainer = instantiate(cfg.trainer, logger=loggers or False, callbacks=build_callbacks(cfg))
    log.info("run %s in %s%s", cfg.run_name, run_dir, f", resumed from {resume}" if resume else "")
    try:
        if not resume:  # the starting point's val metrics: metrics.csv row 0 (Figures 2 and 4 start there)
            trainer.validate(module, datamodule=datamodule, verbose=False)
        trainer.fit(module, datamodule=datamodule, ckpt_path=resume)
    finally:
        finish_wandb(loggers)
    return write_summary(cfg, trainer, module, run_dir)


def build(cfg: DictConfig) -> tuple[Path, str | None, pl.LightningDataModule, STEModule]:
    """Check ``cfg`` and build its run: (run dir, checkpoint to resume or None, datamodule, module), nothing written.

    The stacked launcher (src/stacked) builds each of its jobs here, so a slice starts exactly as the run alone.
    """
    validate(cfg)
    take_share(cfg.share)
    run_dir = Path(cfg.paths.output_dir)
    resume = resume_checkpoint(cfg, run_dir)
    pl.seed_everything(cfg.seed, workers=True)
    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()  # a missing or corrupt dataset fails here, before anything is built
    config = run_config(cfg)  # the model is built from it as a checkpoint's is rebuilt: one home (src.module)
    model, optimizer, scheduler = build_from_config(config, datamodule.input_shape, datamodule.num_classes)
    check_input(model, datamodule.input_shape, cfg.model.name)
    module = STEModule(
        model,
        optimizer,
        scheduler,
        datamodule.num_classes,
        config=config,
        in_shape=tuple(datamodule.input_shape),
        max_loss=float(cfg.divergence.max_loss),
    )
    if cfg.init.checkpoint and not resume:
        load_weights(module, cfg.init.checkpoint)
    return run_dir, resume, datamodule, module


def build_callbacks(cfg: DictConfig) -> list:
    """conf/train.yaml's callbacks; the progress bar only when the trainer shows one (Lightning refuses a bar
    callback with enable_progress_bar false)."""
    return [
        instantiate(c)
        for name, c in cfg.callbacks.items()
        if c and (name != "progress_bar" or cfg.trainer.enable_progress_bar)
    ]


def take_share(share: DictConfig) -> None:
    """This run's slice of a machine that concurrent runs share (the joblib launcher): CPU threads and a cap on
    the GPU memory it may allocate, so N runs on one GPU cannot starve each other of memory."""
    if share.threads:
        torch.set_num_threads(share.threads)
    if share.gpu_memory_fraction and torch.cuda.is_available():
        torch.cuda.set_per_process_memory_fraction(share.gpu_memory_fraction)


def record_start(cfg: DictConfig, run_dir: Path, resumed: bool) -> None:
    """config.yaml (resolved) and provenance.json (src/runs: the first start's record plus one entry per start)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(run_dir / "config.yaml", OmegaConf.to_yaml(OmegaConf.create(run_config(cfg))).encode())
    now = provenance() | {
        "data_root": str(Path(cfg.paths.data_dir).resolve()),
        "data_checksums_verified": cfg.data.get("verify_checksums", None),
    }
    write_provenance(run_dir, now, resumed)


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

    α and a learned weight step follow this run's config: a checkpoint's (another bit width, or none for FP) are
    not loaded; a weight step starts from the loaded weights (src/quant/weights.py).
    """
    state = check_checkpoint(path, "init.checkpoint")  # readable, holds a state_dict (one-line errors)
    own_only = (".alpha", ".weight_step")
    state = {k: v for k, v in state["state_dict"].items() if not k.endswith(own_only)}
    own = {k for k in module.state_dict() if not k.endswith(own_only)}
    if set(state) != own:
        raise ConfigError(
            f"init.checkpoint {path} does not fit model={module.hparams.config['model']['name']}: "
            f"{len(own - set(state))} missing and {len(set(state) - own)} unexpected tensors"
        )
    try:
        module.load_state_dict(state, strict=False)
    except RuntimeError as err:
        raise ConfigError(f"init.checkpoint {path}: {str(err).splitlines()[-1].strip()}") from None


def flat_config(cfg: DictConfig) -> dict:
    """The resolved run config once, flat (model.name, quant.bits, optimizer.lr: W&B's filters and columns), lists
    as lists, without Hydra's _target_s; ``data.name`` is the data group's choice."""
    return flatten(run_config(cfg)) | {"data.name": HydraConfig.get().runtime.choices.data}


def wandb_tags(cfg: DictConfig) -> list[str]:
    """Automatic tags (model, data, seed, STE and activation bits or fp, weight bits) plus the user's ``tags``."""
    bits = cfg.quant.bits
    tags = [cfg.model.name, HydraConfig.get().runtime.choices.data, f"seed{cfg.seed}"]
    tags += ["fp"] if bits is None else [cfg.ste.name, f"a{bits}"]
    weights = weight_token(cfg.wquant.name, cfg.wquant.bits)
    tags += [f"w{weights}"] if weights else []  # w1 binary, wt ternary, wk uniform; float weights: none
    return list(dict.fromkeys(tags + [str(t) for t in cfg.get("tags") or []]))


def build_loggers(cfg: DictConfig, run_dir: Path) -> list:
    """The Lightning loggers of conf/logger; W&B keeps one run id per run dir, so a resumed run continues it."""
    loggers = []
    for node in cfg.logger.values():
        if "Wandb" not in node._target_:
            loggers.append(instantiate(node))
            continue
        id_file = run_dir / "wandb_id"
        if not id_file.is_file():
            atomic_write(id_file, uuid.uuid4().hex[:12].encode())  # any [a-z0-9] string is a valid W&B id
        group = node.group or f"single/{cfg.run_name}"  # a sweep's or stage's group, else the run's own
        logger = instantiate(
            node,
            id=id_file.read_text().strip() if id_file.is_file() else None,  # DDP ranks > 0 write no file
            resume="allow",
            tags=wandb_tags(cfg),
            group=group,
        )
        logger.log_hyperparams(flat_config(cfg))
        loggers.append(logger)
    return loggers


def finish_wandb(loggers) -> None:
    """Close the W&B run so the next job of a multirun starts its own."""
    if any(isinstance(logger, WandbLogger) for logger in loggers):
        import wandb  # imported only when a W&B logger ran: the import alone takes seconds

        wandb.finish()


def write_summary(cfg: DictConfig, trainer: pl.Trainer, module: STEModule, run_dir: Path) -> dict:
    """Final and best metrics and status, as summary.json (src/runs writes it, with the run's identity).

    wall_time_s adds up every start of the run (each up to its last checkpoint: the module keeps the sum).
    """
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    fields = names(cfg) | {
        "epochs": trainer.current_epoch,
        "status": "diverged" if module.diverged else "finished",
        "reason": module.diverged_reason,
        "diverged": module.diverged,
        "debug": bool(trainer.fast_dev_run),  # a fast_dev_run: never read as a result
        "train_loss": finite(metrics.get("train/loss")),
        "val_loss": finite(metrics.get("val/loss")),
        "val_acc": finite(metrics.get("val/acc")),
        "val_acc_best": finite(module.best["val/acc_best"]),
        "best_epoch": module.best["val/acc_best_epoch"] or None,
        "val_examples": val_examples(trainer, cfg.data.get("val_batch_size")),
        "population_loss": finite(metrics.get("val/population_loss")),
        "epoch_time_s": finite(metrics.get("time/epoch_s")),
        "wall_time_s": module.wall_time,
        "init_checkpoint": cfg.init.checkpoint,
        "checkpoint": str(run_dir / "checkpoints" / "last.ckpt"),
    }
    summary = write_record(run_dir, run_config(cfg), HydraConfig.get().runtime.choices, fields)
    log.info("%s %s: val/acc %s (best %s at epoch %s)", cfg.run_name, summary["status"], rounded(summary["val_acc"]),
             rounded(summary["val_acc_best"]), summary["best_epoch"])  # fmt: skip
    return summary


def val_examples(trainer: pl.Trainer, batch_size: int | None) -> int | None:
    """How many examples the final validation scored: the n of its accuracy's binomial standard error."""
    data = getattr(trainer.datamodule, "val_data", None)
    if data is None:
        return None
    batches = (trainer.num_val_batches or [None])[0]
    limited = batches * batch_size if batches is not None and batch_size else math.inf
    return int(min(len(data[1]), limited))  # limit_val_batches scores the first batches only


def rounded(x: float | None) -> str:
    return "—" if x is None else f"{x:.2f}"


def remove_if_empty(run_dir: Path) -> None:
    """Drop a run dir that holds only Hydra's own files (.hydra/, train.log): a rejected input leaves nothing."""
    if run_dir.is_dir() and all(p.name in (".hydra", "train.log") for p in run_dir.iterdir()):
        shutil.rmtree(run_dir)


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    """Command line entry. A bad input ends a single run with one line, before any file is written; in a
    sweep, a failed job records ``failed`` and its reason in its run dir and the sweep goes on
    (``RunChecks`` exits non-zero at the end). Returns the best val top-1 (for sweepers)."""
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        return train(cfg)["val_acc_best"]
    except (ConfigError, SaveError, RunFileError) as err:
        message = f"error: {err}"
    except Exception as err:  # a crash mid-run: the traceback goes to the job's log
        if HydraConfig.get().mode != RunMode.MULTIRUN:
            raise
        log.error(traceback.format_exc())
        message = f"error: crashed: {type(err).__name__}: {err}"
    if HydraConfig.get().mode != RunMode.MULTIRUN:
        remove_if_empty(run_dir)
        sys.exit(message)
    log.error(message)
    record_failure(cfg, run_dir, message)
    return None


class RunChecks(Callback):
    """Hydra callback: an output dir that cannot be made is one line before anything runs; at the end of a
    multirun, the failed jobs are named and the exit code is non-zero."""

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        # run.dir's ${hydra:...} and the validation resolve only once HydraConfig is set (Hydra's next step anyway)
        HydraConfig.instance().set_config(config)
        try:  # a bad input is one line before Hydra writes anything (the run dir, .hydra/, train.log)
            validate_job(config)
        except ConfigError as err:
            sys.exit(f"error: {err}")
        make_dir(config.hydra.run.dir)

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        if "max_stack" in config.hydra.launcher:  # hydra/launcher=stacked: checked before the sweep dir
            check_max_stack(config.hydra.launcher.max_stack)
        make_dir(config.hydra.sweep.dir)
        self.start = time.time()

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        sweep = Path(config.hydra.sweep.dir)
        failed = failed_runs(sweep, since=self.start)
        if failed:
            total = sum(p.stat().st_mtime >= self.start for p in sweep.glob("*/summary.json"))
            names = ", ".join(run.path.name for run in failed)
            sys.exit(f"error: {len(failed)} of {total} jobs failed: {names}")


def make_dir(path: str) -> None:
    try:
        Path(path).mkdir(parents=True, exist_ok=True)
    except OSError as err:
        sys.exit(f"error: cannot create the output dir {path}: {err.strerror or err}")


if __name__ == "__main__":
    main()
