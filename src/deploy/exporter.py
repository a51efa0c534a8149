"""Export a trained run: model.onnx, model_int.npz (the integer form), export.json and export.md in one
directory, written beside it and renamed into place only when complete and past the parity check."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import onnx
import onnxruntime
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from src.data.batches import normalise
from src.data.files import DataError
from src.deploy import intform
from src.deploy.onnx_graph import IR_VERSION, OPSET, build_onnx
from src.deploy.parity import parity
from src.deploy.plan import ExportError, plan_model
from src.deploy.report import markdown
from src.evaluate import load_run
from src.module import STEModule
from src.provenance import provenance
from src.resume import checkpoint_file

EXPORTABLE = ("lenet5", "vgg11", "resnet20", "resnet", "tiny")  # the src/models.py layouts plan_model reads
BAD_STATUS = ("diverged", "failed")  # summary.json statuses of runs whose weights are not a trained model


class ParityError(RuntimeError):
    """The exported forms disagree with PyTorch on more predictions than allowed."""


def export(path, out, examples: int | None = None, min_agreement: float = 99.9, overrides=(),
           threads: int = 1) -> dict:  # fmt: skip
    """Export the run or checkpoint ``path`` into the directory ``out``; returns the export.json content."""
    module, config = _checked_run(path, overrides)
    data = _data(config, examples)
    tmp = _claim_output(Path(out))
    try:
        summary = _export_into(tmp, path, module, config, data, min_agreement, threads)
        _publish(tmp, Path(out))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return summary


def _checked_run(path, overrides) -> tuple[STEModule, DictConfig]:
    """The run's module and config (src.evaluate.load_run: the checkpoint read as tensors only, data overrides
    checked as src.train checks them); every refusal comes here, before any work."""
    module, config = load_run(path, overrides)
    ckpt = checkpoint_file(str(path))
    run_dir = ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent
    summary = _read_json(run_dir / "summary.json")
    if summary.get("status") in BAD_STATUS:
        reason = summary.get("reason") or summary.get("diverged_reason") or "see its summary.json"
        raise ExportError(f"{run_dir} is a {summary['status']} run ({reason}): nothing trained to export")
    name = config.model.name
    if name == "two_layer":
        raise ExportError(
            "model=two_layer is the paper's theory model (Gaussian input, no classifier): not exported"
        )
    if name not in EXPORTABLE:
        raise ExportError(f"model={name} is not exportable (the export knows {', '.join(EXPORTABLE)})")
    if config.quant.bits is None:
        raise ExportError(
            "a full-precision run (quant=fp, float ReLU): there are no quantized activations to export"
        )
    bad = [k for k, v in module.state_dict().items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise ExportError(f"{ckpt} holds non-finite weights ({bad[0]}): a diverged run")
    return module, config


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except (ValueError, OSError):
        return {}


def _claim_output(out: Path) -> Path:
    """A fresh temporary directory beside ``out``; refuses an ``out`` that is a file or a foreign directory."""
    if out.is_file() or (out.is_dir() and any(out.iterdir()) and not (out / "export.json").is_file()):
        raise ExportError(f"--out {out} exists and is not an earlier export: choose another directory")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    except OSError as err:
        raise ExportError(f"cannot write beside --out {out}: {err.strerror or err}") from None


def _publish(tmp: Path, out: Path) -> None:
    """Rename the finished directory onto ``out`` (an earlier export there is swapped out, then removed)."""
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _export_into(
    tmp: Path, path, module: STEModule, config: DictConfig, data, min_agreement, threads
) -> dict:
    model = module.model.eval()
    if (
        getattr(model, "_compiled_call_impl", None) is not None
    ):  # model.compile=true: export and compare eager
        model._compiled_call_impl = None  # (nn.Module.compile's own attribute; hooks and Ceil follow eager)
    in_shape, classes = tuple(module.hparams.in_shape), module.hparams.num_classes
    ops = plan_model(model)
    proto = build_onnx(ops, in_shape, classes, doc=f"STE Lab export of {config.get('run_name')}")
    onnx.checker.check_model(proto, full_check=True)
    program, arrays = intform.build(ops, in_shape)
    result = parity(model, ops, proto, program, arrays, data.batches, threads)
    agreement = min(result["agreement"].values())
    result |= {"min_agreement": min_agreement, "passed": agreement >= min_agreement}
    onnx_bytes = proto.SerializeToString()
    (tmp / "model.onnx").write_bytes(onnx_bytes)
    meta = {
        "input": data.input_spec,
        "output": {"name": "logits", "shape": ["N", classes], "dtype": "float32"},
    }
    intform.save(tmp / "model_int.npz", program, arrays, meta)
    summary = _summary(path, config, ops, program, data.input_spec, classes, result, tmp, model)
    (tmp / "export.json").write_text(json.dumps(summary, indent=2) + "\n")
    (tmp / "export.md").write_text(markdown(summary))
    if not result["passed"]:
        raise ParityError(
            f"parity check failed: prediction agreement {agreement:.3f} % < --min-agreement {min_agreement} % "
            f"on {result['examples']} examples (nothing written)"
        )
    return summary


class _Data:
    """The run's validation examples (normalised as in training) in batches, and the input's description."""

    def __init__(self, config: dict, examples: int | None):
        dm = instantiate(config.data)
        dm.prepare_data()
        dm.setup("validate")
        x, y = dm.val_data
        n = len(y) if examples is None else min(examples, len(y))
        self.x, self.y, self.size = x[:n], y[:n], dm.val_batch_size
        self.mean, self.std = (torch.tensor(v).view(1, -1, 1, 1) for v in (dm.mean, dm.std))  # (1,C,1,1)
        self.input_spec = {
            "name": "input", "shape": ["N", *dm.input_shape], "dtype": "float32",
            "normalisation": "x = (pixel / 255 - mean) / std per channel, pixels uint8 in [0, 255], NCHW",
            "mean": list(dm.mean), "std": list(dm.std),
        }  # fmt: skip

    @property
    def batches(self):
        for images, labels in zip(self.x.split(self.size), self.y.split(self.size), strict=True):
            yield normalise(images, self.mean, self.std), labels


def _data(config: dict, examples: int | None) -> _Data:
    """The parity check's examples; a missing or damaged dataset file is a one-line ExportError."""
    if examples is not None and examples < 1:
        raise ExportError(f"--examples must be >= 1, got {examples}")
    try:
        return _Data(config, examples)
    except DataError as err:
        raise ExportError(f"the parity check's data: {err} (data.root=<dir> points elsewhere)") from None


def _provenance() -> dict:
    """src.provenance's record (commit, versions, hardware, command, time), with onnx and onnxruntime."""
    record = provenance()
    record["versions"] |= {"onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__}
    return record


def _summary(path, config, ops, program, input_spec, classes, result, tmp: Path, model) -> dict:
    ckpt = checkpoint_file(str(path))
    macs = sum(op.get("macs", 0) for op in program)
    float_macs = sum(op.get("macs", 0) for op in program if op.get("acc") == "float")
    params = sum(t.numel() for t in model.state_dict().values() if t.is_floating_point())
    acts = [op for op in ops if op.act is not None]
    wq = config.get("wquant", {"name": "fp"})
    return {
        "run_name": config.get("run_name"),
        "checkpoint": str(ckpt),
        "model": config["model"]["name"],
        "ste": config.get("ste", {}).get("name"),
        "bits": {
            "activations": config["quant"]["bits"],
            "weights": wq.get("bits"),
            "wquant": wq.get("name"),
            "first_last": wq.get("first_last"),
        },  # fmt: skip
        "alpha_mode": config["quant"].get("alpha_mode", "fixed"),
        "alpha": {op.out: op.act[0] for op in acts},
        "opset": OPSET,
        "ir_version": IR_VERSION,
        "input": input_spec,
        "output": {
            "name": "logits",
            "shape": ["N", classes],
            "dtype": "float32",
            "meaning": "class scores (argmax = prediction)",
        },
        "sizes_bytes": {
            "model.onnx": (tmp / "model.onnx").stat().st_size,
            "model_int.npz": (tmp / "model_int.npz").stat().st_size,
            "checkpoint": ckpt.stat().st_size,
            "float32_weights": 4 * params,
        },
        "integer_form": {
            "macs_per_example": macs,
            "float_accumulator_macs": float_macs,
            "float_accumulator_fraction": float_macs / max(macs, 1),
        },  # fmt: skip
        "parity": result,
        "provenance": _provenance(),
    }
