"""Bad input stops a run in one line before training: validate(cfg), then the datamodule's prepare_data().

``python -m tests.test_bad_inputs`` prints docs/bad_inputs.md: each input tried through train(cfg), with the
line that main() prints for it.
"""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate

from src.config import ConfigError, check_checkpoint, validate
from tests.conftest import REPO
from tests.runs import data_overrides, fast_cfg

TRUNCATED_GZ = "Compressed file ended before the end-of-stream marker was reached"
REFETCH = (
    "the file is damaged or not the original: delete it and run with data.download=true to fetch it again, "
    "or copy the original file there"
)
ROOT_KEYS = (
    "callbacks, data, divergence, hydra, init, logger, model, optimizer, paths, quant, resume, run_name, "
    "scheduler, seed, share, ste, tag, tags, trainer, wquant"
)
# (overrides of a tiny CIFAR-shaped run, the exact line); {data} is the test's data root
CASES = [
    ("+foo=1", f"unknown root key(s) foo; valid: {ROOT_KEYS}"),
    ("optimizer.lr=abc", "optimizer.lr must be a finite number, got 'abc'"),
    ("optimizer.lr=inf", "optimizer.lr must be a finite number, got inf"),
    ("optimizer.lr=nan", "optimizer.lr must be a finite number, got nan"),
    ("optimizer.lr=0", "optimizer.lr must be > 0, got 0"),
    ("optimizer.weight_decay=abc", "optimizer.weight_decay must be a finite number, got 'abc'"),
    ("optimizer.weight_decay=-inf", "optimizer.weight_decay must be a finite number, got -inf"),
    ("optimizer.momentum=nan", "optimizer.momentum must be a finite number, got nan"),
    ("optimizer.momentum=1", "optimizer.momentum must lie in [0, 1), got 1"),
    (
        "+optimizer.foo=1",
        "unknown key(s) optimizer.foo; valid: params, lr, momentum, dampening, weight_decay, nesterov, "
        "maximize, foreach, differentiable, fused",
    ),
    ("optimizer=adam +optimizer.betas=[1.5,0.9]", "optimizer: Invalid beta parameter at index 0: 1.5"),
    ("scheduler.gamma=abc", "scheduler.gamma must be a number like its default 0.1, got 'abc'"),
    (
        "scheduler=hold_then_multistep +scheduler.then.foo=1",
        "scheduler: MultiStepLR.__init__() got an unexpected keyword argument 'foo'",
    ),
    ("trainer.max_epochs=2.5", "trainer.max_epochs must be an integer, got 2.5"),
    ("trainer.max_epochs=true", "trainer.max_epochs must be an integer, got True"),
    ("+trainer.foo=1", "unknown key(s) trainer.foo; valid: see Trainer's arguments"),
    ("seed=true", "seed must be an integer in [0, 4294967295], got True"),
    ("seed=1.5", "seed must be an integer in [0, 4294967295], got 1.5"),
    ("data.batch_size=0", "data.batch_size must be >= 1, got 0"),
    ("data.batch_size=2.5", "data.batch_size must be an integer, got 2.5"),
    ("data.val_batch_size=abc", "data.val_batch_size must be an integer, got 'abc'"),
    ("data.train_subset=0", "data.train_subset must be >= 1, got 0"),
    ("data.val_subset=true", "data.val_subset must be an integer, got True"),
    (
        "data.train_subset=1000",
        "data.train_subset=1000 exceeds the 256 train examples in {data}/cifar-10-batches-py",
    ),
    (
        "data.val_subset=500",
        "data.val_subset=500 exceeds the 128 test examples in {data}/cifar-10-batches-py",
    ),
    (
        "+data.foo=1",
        "unknown key(s) data.foo; valid: root, batch_size, augment, mean, std, crop_padding, hflip, "
        "val_batch_size, download, verify_checksums, on_device, train_subset, val_subset, seed, holdout",
    ),
    ("+model.foo=1", "unknown key(s) model.foo; valid: width"),
    (
        "model.compile_mode=fast",
        "model.compile_mode must be one of ('default', 'reduce-overhead', 'max-autotune', "
        "'max-autotune-no-cudagraphs'), got 'fast'",
    ),
    ("model.compile=yes", "model.compile must be true or false, got 'yes'"),
    ("model.width=abc", "model.width must be a number like its default 8, got 'abc'"),
    ("+quant.eps=0.1", "unknown key(s) quant.eps; valid: bits, alpha, ste, alpha_mode"),
    ("wquant=uniform wquant.bits=1", "wquant.bits must be an integer in [2, 16] for uniform, got 1 (1 bit: wquant=binary)"),
    ("wquant=binary wquant.bits=4", "wquant=binary has 1-bit weights: wquant.bits must be 1, got 4 (k bits: wquant=uniform)"),
    ("wquant=uniform wquant.scale=mse", "wquant.scale must be one of ('max', 'lloyd', 'lsq'), got 'mse'"),
    ("wquant=binary wquant.ste=sign", "unknown wquant.ste 'sign'; valid names: clipped, identity"),
]  # fmt: skip


def first_error(cfg) -> str:
    """The line a run stops with before training: validate(cfg), then the dataset check in prepare_data()."""
    with pytest.raises(ConfigError) as excinfo:
        validate(cfg)
        instantiate(cfg.data).prepare_data()
    message = str(excinfo.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("override, expected", CASES, ids=[c[0] for c in CASES])
def test_bad_value_is_one_exact_line(tmp_path, override, expected):
    cfg = fast_cfg(tmp_path, "tiny", *override.split())
    assert first_error(cfg) == expected.format(data=tmp_path / "data")


# --- checkpoints (init.checkpoint and resume) -------------------------------------------------------------


def checkpoints(tmp_path: Path) -> dict[str, Path]:
    """A good zip-format checkpoint, the same cut in half, junk bytes, one without state_dict (each in a run
    dir's checkpoints/, where resume= accepts a file), an empty dir."""
    good = tmp_path / "run" / "checkpoints" / "last.ckpt"
    good.parent.mkdir(parents=True)
    torch.save({"state_dict": {"w": torch.zeros(100, 100)}, "epoch": 3}, good)
    paths = {"good": good, "truncated": good.parent / "cut.ckpt", "junk": good.parent / "junk.ckpt"}
    paths["truncated"].write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    paths["junk"].write_bytes(b"<html>not found</html>")
    paths["no_state_dict"] = good.parent / "weights.pt"
    torch.save({"w": torch.zeros(3)}, paths["no_state_dict"])
    paths["empty_dir"] = tmp_path / "empty"
    paths["empty_dir"].mkdir()
    return paths


@pytest.mark.parametrize("key", ["init.checkpoint", "resume"])
def test_unreadable_checkpoints_are_one_line(tmp_path, key):
    paths = checkpoints(tmp_path)
    expected = {
        "truncated": f"{key}: {paths['truncated']} is not a readable checkpoint (truncated, or not a torch.save file)",
        "junk": f"{key}: {paths['junk']} is not a readable checkpoint (truncated, or not a torch.save file)",
        "no_state_dict": f"{key}: {paths['no_state_dict']} holds no state_dict (not a checkpoint of this "
        "project's runs)",
        "empty_dir": f"{key}: {paths['empty_dir']} is a directory without checkpoints/last.ckpt",
    }  # fmt: skip
    for case, message in expected.items():
        cfg = fast_cfg(tmp_path, "tiny", f"{key}={paths[case]}", run=case)
        assert first_error(cfg) == message, case


def test_checkpoint_file_or_run_dir_is_accepted(tmp_path):
    paths = checkpoints(tmp_path)
    for path in (paths["good"], tmp_path / "run"):  # a run dir means its checkpoints/last.ckpt
        assert check_checkpoint(str(path), "resume")["epoch"] == 3
        validate(fast_cfg(tmp_path, "tiny", f"resume={path}", f"init.checkpoint={path}"))


# --- damaged dataset files, through the config ------------------------------------------------------------


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:500])


@pytest.mark.parametrize(
    "model, name, corrupt, damage",
    [
        ("lenet5", "MNIST/raw/t10k-images-idx3-ubyte.gz", _truncate, f"not a readable gzip file ({TRUNCATED_GZ})"),
        ("lenet5", "MNIST/raw/train-labels-idx1-ubyte.gz", lambda p: p.write_bytes(b"<html>"),
         "not a readable gzip file (Not a gzipped file (b'<h'))"),
        ("tiny", "cifar-10-batches-py/data_batch_2", _truncate,
         "not a CIFAR-10 python batch (UnpicklingError: pickle data was truncated)"),
        ("tiny", "cifar-10-batches-py/test_batch", lambda p: p.write_bytes(b"<html>"),
         "not a CIFAR-10 python batch (UnpicklingError: invalid load key, '<'.)"),
    ],
)  # fmt: skip
def test_damaged_data_file_is_named_with_the_fix(tmp_path, model, name, corrupt, damage):
    cfg = fast_cfg(tmp_path, model)
    path = tmp_path / "data" / name
    corrupt(path)
    assert first_error(cfg) == f"{path}: {damage}; {REFETCH}"


def test_checksum_mismatch_names_the_file_and_both_ways_out(tmp_path):
    cfg = fast_cfg(tmp_path, "lenet5", "data.verify_checksums=true")  # the test files are not torchvision's
    path = tmp_path / "data" / "MNIST" / "raw" / "train-images-idx3-ubyte.gz"
    message = first_error(cfg)
    assert message.startswith(f"MNIST checksum mismatch: {path} has MD5 ") and message.endswith(
        "torchvision publishes f68b3c2dcbeaaa9fbdd348bbdeb94873; for a deliberate local copy such as a rebuild "
        "set data.verify_checksums=false, else delete it and run with data.download=true to fetch it again, "
        "or copy the original file there"
    )


# --- the command line -------------------------------------------------------------------------------------


def cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = os.environ | {"WANDB_MODE": "offline", "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "src.train", *args, f"hydra.run.dir={tmp_path / 'run'}"]
    return subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)


def test_cli_unknown_root_key_is_one_line(tmp_path):
    out = cli(tmp_path, "+foo=1", "optimizer.lr=abc")
    assert out.returncode == 1 and out.stderr.strip().splitlines() == [
        f"error: unknown root key(s) foo; valid: {ROOT_KEYS}"
    ]


def test_cli_truncated_dataset_is_one_line(tmp_path):
    args = [*data_overrides("lenet5", tmp_path / "data"), "model=lenet5", "trainer=cpu", "logger=csv"]
    path = tmp_path / "data" / "MNIST" / "raw" / "t10k-labels-idx1-ubyte.gz"
    path.write_bytes(gzip.compress(b"\0\0\x08\x01")[:-6])
    out = cli(tmp_path, *args)
    lines = [line for line in out.stderr.splitlines() if line.startswith("error: ")]
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert lines == [f"error: {path}: not a readable gzip file ({TRUNCATED_GZ}); {REFETCH}"]


# --- docs/bad_inputs.md -----------------------------------------------------------------------------------

# Inputs for the table beyond CASES: (model of the tiny run, overrides, how to damage the data first)
DOC_EXTRA = [
    ("tiny", "quant.bits=0", None),
    ("tiny", "quant.bits=17", None),
    ("tiny", "quant.bits=2.5", None),
    ("tiny", "quant.alpha=0", None),
    ("tiny", "quant.alpha_mode=learned", None),
    ("tiny", "ste.name=tanh", None),
    ("tiny", "model.name=alexnet", None),
    ("tiny", "optimizer.lr=-0.1", None),
    ("tiny", "seed=-1", None),
    ("tiny", "ste=leaky_clipped_relu ste.eps=2", None),
    ("lenet5", "model=vgg11", None),
    ("two_layer", "model=tiny", None),
    ("tiny", "data.download=false paths.data_dir=/nonexistent", None),
    ("tiny", "init.checkpoint=/nonexistent/last.ckpt", None),
    ("tiny", "resume={tmp}/empty", "empty_dir"),
    ("tiny", "init.checkpoint={tmp}/run/checkpoints/cut.ckpt", "truncated_ckpt"),
    ("lenet5", "", "truncate MNIST/raw/t10k-images-idx3-ubyte.gz"),
    ("lenet5", "", "garbage MNIST/raw/train-labels-idx1-ubyte.gz"),
    ("tiny", "", "truncate cifar-10-batches-py/data_batch_2"),
    ("lenet5", "data.verify_checksums=true", None),
]


def _damage(tmp: Path, how: str | None) -> None:
    if how in ("empty_dir", "truncated_ckpt"):
        checkpoints(tmp)
    elif how:
        verb, name = how.split()
        path = tmp / "data" / name
        _truncate(path) if verb == "truncate" else path.write_bytes(b"<html>")


def _doc_row(model: str, overrides: str, how: str | None) -> str:
    """One table row: the input as typed (with what was done to the files) and the line main() prints."""
    from src.train import train  # only here: the tests above do not depend on train()'s order of steps

    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        args = overrides.format(tmp=tmp).split()
        cfg = fast_cfg(tmp, model, *args)
        _damage(tmp, how)
        try:
            train(cfg)
            line = "(no error: the run trained)"
        except (ConfigError, FileNotFoundError) as err:  # what src.train.main catches
            line = f"error: {err}"
        except Exception as err:  # noqa: BLE001 - shown as a traceback by the command line
            line = f"TRACEBACK {type(err).__name__}: {str(err).splitlines()[0]}"
        line = line.replace(str(tmp), "<tmp>")
    shown = ("" if model == "tiny" else f"model={model} ") + overrides.replace("{tmp}", "<tmp>")
    return f"| `{shown.strip() or 'model=tiny'}`{f' ({how})' if how else ''} | `{line}` |"


def doc_table() -> str:
    """The markdown table of docs/bad_inputs.md: CASES, then DOC_EXTRA, each run through train(cfg)."""
    rows = [_doc_row("tiny", override, None) for override, _ in CASES] + [_doc_row(*e) for e in DOC_EXTRA]
    return "\n".join(["| input tried | message |", "|---|---|", *rows])


if __name__ == "__main__":
    print(doc_table())
