"""Which sweep jobs can share one stacked model, and in which groups.

Jobs share a model when everything that shapes one training step is equal: architecture, data and batch size,
epochs, bits, trainer, schedule. Allowed to differ inside a group (each slice keeps its own): the seed (its
initial weights and data order), ``init.checkpoint``, ``optimizer.lr`` and ``optimizer.weight_decay`` (each slice
has its own optimizer), the tag, and the STE when it is identity, relu or clipped_relu with a fixed α
(src/stacked/ste.py: one vmapped function serves the three).
"""

from __future__ import annotations

import json
import math

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from src.runs.job import run_config
from src.stacked.ste import BOUNDS

# the keys a slice keeps its own (dotted paths in the resolved run config); everything else must be equal
PER_SLICE = ("seed", "data.seed", "tag", "tags", "run_name", "paths.output_dir", "init.checkpoint", "resume",
             "optimizer.lr", "optimizer.weight_decay", "callbacks.progress_bar")  # fmt: skip
PER_SLICE_STE = (
    "ste",
    "quant.ste",
)  # per slice only for a fixed α (a learned α needs the STE's own backward)
MODELS = ("lenet5", "resnet20", "tiny")  # tested stacked against separate runs (tests/test_stack*.py)
DATA = ("mnist", "cifar10")  # whole-tensor datamodules whose batches come from (seed, epoch) alone
# Trainer keys the stacked loop honours; any other (gradient clipping, accumulation, max_steps, ...) is refused
TRAINER = {"_target_", "default_root_dir", "max_epochs", "accelerator", "devices", "precision", "deterministic",
           "log_every_n_steps", "enable_model_summary", "limit_train_batches", "limit_val_batches",
           "enable_progress_bar", "inference_mode", "plugins", "benchmark"}  # fmt: skip
# not bf16-mixed: under CPU autocast the vmapped batch_norm gets bf16 inputs with float32 weights and fails
# (measured; a GPU is untested); not 16-mixed: it needs Lightning's GradScaler, which the stacked loop does not run
PRECISIONS = ("32-true", "32", "64-true", "64")


def use(cfg: DictConfig) -> DictConfig:
    """Make ``cfg`` the current Hydra job config (the run name, choices and W&B tags resolve from it)."""
    HydraConfig.instance().set_config(cfg)
    return cfg


def why_not(cfg: DictConfig, data: str) -> str | None:
    """Why the job ``cfg`` (data group ``data``) cannot run in a stack, or None when it can."""
    trainer = cfg.trainer
    checks = [
        (cfg.model.name in MODELS, f"model={cfg.model.name} (stacked: {', '.join(MODELS)})"),
        (data in DATA, f"data={data} (stacked: {', '.join(DATA)})"),
        (
            cfg.ste.name in BOUNDS,
            f"ste={cfg.ste.name} (stacked: {', '.join(BOUNDS)}, whose μ′ is an interval)",
        ),
        (cfg.wquant.name == "fp", f"wquant={cfg.wquant.name} (weight quantizers are not stacked)"),
        (
            not cfg.callbacks.get("diagnostics"),
            "callbacks.diagnostics is on (callbacks.diagnostics=null stacks)",
        ),
        (not cfg.model.get("compile"), "model.compile is on"),
        (trainer.devices == 1 and trainer.get("strategy") in (None, "auto"), "more than one device"),
        (str(trainer.precision) in PRECISIONS, f"trainer.precision={trainer.precision}"),
        (not cfg.resume, "resume= is set (a sweep resumes its jobs by their run dirs)"),
    ]
    extra = sorted(set(trainer) - TRAINER)
    checks.append((not extra, f"trainer.{extra[0] if extra else ''} is set"))
    return next((why for ok, why in checks if not ok), None)


def group_key(config: dict, run_dir: str) -> str:
    """The resolved run config without its per-slice keys, as text: jobs with equal keys share a model.

    Values that hold the run dir or the run name (checkpoint paths, metrics.csv, W&B's save_dir and run name)
    name the job, not its model: both are replaced by placeholders."""
    shared = json.loads(json.dumps(config))  # a deep copy of plain data
    per_slice = PER_SLICE + (PER_SLICE_STE if config["quant"].get("alpha_mode") == "fixed" else ())
    for path in per_slice:
        *parents, leaf = path.split(".")
        node = shared
        for p in parents:
            node = node.get(p) or {}
        node.pop(leaf, None)
    text = json.dumps(shared, sort_keys=True).replace(run_dir, "<run dir>")
    return text.replace(json.dumps(config["run_name"]), '"<run name>"')


def plan(jobs: list[tuple[int, DictConfig, str]], max_stack: int) -> tuple[list[list[int]], dict[int, str]]:
    """Groups of at most ``max_stack`` job numbers that share a model, and the jobs left alone with why.

    ``jobs``: (job number, config with its Hydra node, data group). A group of one is left alone.
    """
    groups: dict[str, list[int]] = {}
    alone: dict[int, str] = {}
    for num, cfg, data in jobs:
        use(cfg)  # its ${hydra:...} values (run name, run dir) resolve from the current Hydra config
        reason = why_not(cfg, data)
        if reason:
            alone[num] = reason
            continue
        groups.setdefault(group_key(run_config(cfg), str(cfg.paths.output_dir)), []).append(num)
    stacks = []
    for members in groups.values():
        n = math.ceil(len(members) / max_stack)  # as few stacks as fit, of near-equal sizes (5 at K=4: 3 + 2)
        for chunk in (members[i::n] for i in range(n)):
            if len(chunk) > 1:
                stacks.append(sorted(chunk))
            else:
                alone[chunk[0]] = "no other job of the sweep shares its model"
    return stacks, alone
