"""Evaluate a checkpoint: ``python -m src.evaluate <run dir | .ckpt> [key=value ...]``.

The model is rebuilt from the config saved in the checkpoint (``STEModule.load_from_checkpoint(path)``), the
data from the same config with any overrides (``data.val_subset=1000``, ``data.root=/elsewhere``,
``data=...`` keys of the saved config), and Lightning's ``test_step`` runs over the test split (the official
test set for MNIST/CIFAR-10). Prints top-1 and loss and writes them to <run dir>/evaluation.json (or --out).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pytorch_lightning as pl
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from src.config import ConfigError, validate_data
from src.module import STEModule
from src.resume import check_checkpoint, checkpoint_file
from src.rundir import SaveError, atomic_write, finite
from src.targets import construct


def load_run(path: str | Path, overrides: list[str] = ()) -> tuple[STEModule, DictConfig]:
    """A run dir's or checkpoint's module (on the CPU) and its saved config with ``overrides`` (key=value)."""
    check_checkpoint(str(path), "checkpoint")
    module = STEModule.load_from_checkpoint(checkpoint_file(str(path)), map_location="cpu", weights_only=True)
    config = OmegaConf.create(module.hparams.config)
    try:
        changes = OmegaConf.from_dotlist(list(overrides))
    except Exception as err:  # noqa: BLE001 - OmegaConf's grammar errors: the user's override
        raise ConfigError(f"bad override in {list(overrides)}: {' '.join(str(err).split())}") from None
    check_overrides(config, changes)
    return module, OmegaConf.merge(config, changes)


def check_overrides(config: DictConfig, changes: DictConfig) -> None:
    """Overrides change data keys the saved config has, to values src.train would accept (the same checks)."""
    absent = object()  # a key the saved config lacks, told apart from one it holds as null (val_subset)
    known = lambda k: k.startswith("data.") and OmegaConf.select(config, k, default=absent) is not absent  # noqa: E731
    unknown = [k for k in flat_keys(changes) if not known(k)]
    if unknown:
        valid = ", ".join(f"data.{k}" for k in config.data if not str(k).startswith("_"))
        raise ConfigError(f"cannot override {', '.join(unknown)}: overrides change the data config ({valid})")
    merged = OmegaConf.merge(config, changes)
    validate_data(merged)
    construct("data", merged.data)


def flat_keys(node: DictConfig, prefix: str = "") -> list[str]:
    """The dotted keys of a config's leaves."""
    keys = []
    for key, value in node.items():
        keys += flat_keys(value, f"{prefix}{key}.") if isinstance(value, DictConfig) else [f"{prefix}{key}"]
    return keys


def check_out(out: Path) -> None:
    """The result file can be written: its folder exists and takes a file, and it is not a directory. Tried
    with the temporary name atomic_write uses (removed again), before the evaluation's work."""
    where = f"--out {out}" if out.name != "evaluation.json" else str(out)
    if out.is_dir():
        raise ConfigError(f"{where} is a directory; give a file name such as {out / 'evaluation.json'}")
    if not out.parent.is_dir():
        raise ConfigError(f"{where}: the folder {out.parent} does not exist")
    probe = out.with_name(f".{out.name}.tmp")
    try:
        probe.open("wb").close()
        probe.unlink()
    except OSError as err:
        raise ConfigError(f"{where} cannot be written: {err.strerror or err}") from None


def make_trainer(accelerator: str) -> pl.Trainer:
    """Lightning's Trainer for one device; an accelerator it refuses is one line."""
    try:
        return pl.Trainer(
            accelerator=accelerator, devices=1, logger=False, enable_progress_bar=False,
            enable_checkpointing=False, enable_model_summary=False, inference_mode=False,
        )  # fmt: skip
    except Exception as err:  # noqa: BLE001 - ValueError, MisconfigurationException: the user's choice
        raise ConfigError(f"--accelerator {accelerator}: {' '.join(str(err).split())}") from None


def run_dir(ckpt: Path) -> Path:
    """The run directory of a checkpoint: the parent of checkpoints/, else the file's own folder."""
    return ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent


def evaluate(path: str | Path, overrides: list[str] = (), accelerator: str = "auto") -> dict:
    """Test top-1 (%) and loss of a checkpoint on its own data config, with ``overrides`` (key=value) applied."""
    module, config = load_run(path, overrides)
    ckpt = checkpoint_file(str(path))
    trainer = make_trainer(accelerator)
    datamodule = instantiate(config.data)
    datamodule.prepare_data()
    metrics = trainer.test(module, datamodule=datamodule, verbose=False)[0]
    return {
        "checkpoint": str(ckpt),
        "overrides": list(overrides),
        "run_name": config.get("run_name"),
        "test_acc": finite(metrics.get("test/acc")),
        "test_loss": finite(metrics.get("test/loss")),
        "examples": len(datamodule.val_data[1]),
    }


def run_parser(prog: str, doc: str) -> argparse.ArgumentParser:
    """The command line of a tool that reads a saved run (load_run): its path and key=value overrides."""
    parser = argparse.ArgumentParser(
        prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("path", help="a run directory (its checkpoints/last.ckpt) or a .ckpt file")
    parser.add_argument(
        "overrides", nargs="*", help="key=value changes to the saved config, e.g. data.root=data"
    )
    return parser


def main(argv=None) -> None:
    parser = run_parser("python -m src.evaluate", __doc__)
    parser.add_argument(
        "--out", type=Path, help="JSON file for the result (default <run dir>/evaluation.json)"
    )
    parser.add_argument("--accelerator", default="auto", help="cpu, gpu or auto (default)")
    args = parser.parse_args(argv)
    try:
        check_checkpoint(str(args.path), "checkpoint")
        out = args.out or run_dir(checkpoint_file(str(args.path))) / "evaluation.json"
        check_out(out)  # before the work: a bad --out is not found after a whole evaluation
        result = evaluate(args.path, args.overrides, args.accelerator)
        atomic_write(out, json.dumps(result, indent=2).encode())
    except (ConfigError, SaveError) as err:
        sys.exit(f"error: {err}")
    print(f"{result['run_name']}: test top-1 {result['test_acc']:.2f} %, loss {result['test_loss']:.4f} "
          f"on {result['examples']} examples ({out})")  # fmt: skip


if __name__ == "__main__":
    main()
