"""Export a trained quantized run: ``python -m src.export <run dir | .ckpt> --out DIR [key=value ...]``.

Writes DIR/model.onnx (opset 13, QDQ), DIR/model_int.npz (integer-only form, src/deploy/intform.py),
DIR/export.json and DIR/export.md, after a parity check of PyTorch, onnxruntime and the integer runner on the
run's validation set (docs/deploy.md). Bad input: one line, exit 2; parity below --min-agreement: exit 1.
"""

from __future__ import annotations

import sys
from pathlib import Path

from src.deploy.exporter import ParityError, export
from src.deploy.plan import ExportError
from src.errors import ConfigError
from src.evaluate import run_parser


def main(argv=None) -> None:
    parser = run_parser("python -m src.export", __doc__)
    parser.add_argument(
        "--out", type=Path, required=True, help="output directory (replaced only when complete)"
    )
    parser.add_argument(
        "--examples", type=int, help="parity check on the first N validation examples (default: all)"
    )
    parser.add_argument(
        "--min-agreement", type=float, default=99.9, help="prediction agreement %% required (default 99.9)"
    )
    parser.add_argument(
        "--threads", type=int, default=1, help="onnxruntime threads in the parity check (default 1)"
    )
    args = parser.parse_intermixed_args(argv)  # overrides may follow --out
    try:
        s = export(args.path, args.out, args.examples, args.min_agreement, args.overrides, args.threads)
    except (ConfigError, ExportError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except ParityError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)
    p = s["parity"]
    agree = ", ".join(f"{k.replace('_vs_', ' vs ')} {v:.2f} %" for k, v in p["agreement"].items())
    sizes = ", ".join(f"{k} {v / 1024:,.1f} KiB" for k, v in s["sizes_bytes"].items())
    print(f"{s['run_name']}: exported to {args.out} ({sizes}); parity on {p['examples']} examples: {agree}")


if __name__ == "__main__":
    main()
