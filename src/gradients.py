"""Full-batch coarse gradients at a checkpoint, for every STE at the same weights:
``python -m src.gradients <run dir | .ckpt> [key=value ...] [--stes identity,relu,clipped_relu] [--subset N]``.

ḡ_s, the gradient of the mean training loss under STE s, is the deep-net counterpart of E_Z[g_s] in Lemma 9: at a
minimum trained with clipped ReLU the paper (§4.2) explains the identity STE's instability by ‖ḡ_identity‖ ≫ 0
while ‖ḡ_clipped_relu‖ ≈ 0. At the checkpoint's weights, over every example of the run's training split (its first
``--subset`` N with data.train_subset, never augmented), it computes the gradient of every Conv/Linear weight (the
weights src.diagnostics compares STEs on; a model without any, two_layer, by parameter) under

* the run's own STE, as configured (label: its name),
* each STE of ``--stes`` swapped into every quantized activation and restored (src.diagnostics.swapped_ste),
* ``float_relu``: every quantized activation a float ReLU (src.probe.float_relu), the unquantized net's gradient,

in one pass over the data (the two-layer model's Gaussian data are drawn fresh on each pass), accumulated in
float64, in eval mode: BN normalises with its running statistics and α is the run's (fixed or learned). Per
variant: each layer's norm and the total, and the total's sampling noise ‖SE(ḡ)‖ (from the spread of the batch
gradients: E‖ḡ‖² = ‖E g‖² + ‖SE‖², so pure noise gives ‖ḡ‖ ≈ ‖SE‖ and √(‖ḡ‖² − ‖SE‖²) estimates ‖E g‖); between
variants: the cosine overall and per layer. Writes gradients.json and gradients.md to --out (default: the run dir). Key=value overrides change the saved config as in
src.evaluate (``data.root=/elsewhere``; ``data.batch_size=1000`` is faster and changes nothing but rounding).
"""

from __future__ import annotations

import contextlib
import json
import math
import shlex
import sys
from functools import partial
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import nn

from src.diagnostics import cosine, quantized_layers, swapped_ste, used_alpha, weight_grads, weight_params
from src.errors import ConfigError, DataError
from src.evaluate import load_run, run_dir, run_parser
from src.probe import eval_mode, float_relu
from src.quant import STES
from src.resume import checkpoint_file
from src.rundir import atomic_write, finite

PAPER_STES = ("identity", "relu", "clipped_relu")
FLOAT = "float_relu"  # the label of the float-ReLU gradient (not a registry STE)
Grads = dict[str, dict[str, torch.Tensor]]  # variant label → layer → ḡ (float64)


def variants(model: nn.Module, stes) -> dict:
    """Label → a context that sets every quantized activation's backward: the run's own STE (as configured; "own"
    when its layers mix STEs), each other STE of ``stes`` swapped in, then the float ReLU."""
    layers = quantized_layers(model)
    if not layers:
        raise ConfigError("the model has no quantized activation (quant=fp): there is no STE to compare")
    if unknown := [s for s in stes if s not in STES]:
        raise ConfigError(f"unknown ste(s) {unknown}; valid: {sorted(STES)}")
    names = {m.ste.name for m in layers.values()}
    out = {names.pop() if len(names) == 1 else "own": contextlib.nullcontext}
    out |= {s: partial(swapped_ste, model, s) for s in stes if s not in out}
    return out | {FLOAT: partial(float_relu, model)}


def full_batch_gradients(model: nn.Module, loss_fn, batches, stes=PAPER_STES) -> tuple[Grads, int, dict]:
    """ḡ of every variant (``variants``), the number of examples N and each ḡ's sampling noise: ḡ weights each
    batch's mean-loss gradient g_b by its size n_b, so it is the gradient of the mean loss over all of ``batches``
    (pairs (x, y)); one pass, eval mode. The noise is ‖SE(ḡ)‖, the norm of ḡ's standard error as an estimate of
    the expected gradient E[g] over the data's distribution: Σ n_b² (g_b − ḡ)² / N² per coordinate, × B/(B−1) for
    B batches (exact for equal batches), summed over coordinates; None for one batch."""
    params = weight_params(model)
    contexts = variants(model, stes)
    device = next(model.parameters()).device
    zeros = lambda: [torch.zeros_like(p, dtype=torch.float64) for p in params.values()]  # noqa: E731
    # per label: Σ n_b g_b, Σ n_b² g_b, Σ n_b² g_b² (coordinate-wise)
    sums = {label: (zeros(), zeros(), zeros()) for label in contexts}
    count, squares, nb = 0, 0, 0
    with eval_mode(model):
        for x, y in batches:
            x, y = x.to(device), y.to(device)
            n = len(y)
            for label, context in contexts.items():
                with context():
                    grads = weight_grads(model, loss_fn, (x, y), list(params.values()))
                for s, c, q, g in zip(*sums[label], grads, strict=True):
                    g = g.double()
                    s += g * n
                    c += g * n**2
                    q += g.square() * n**2
            count, squares, nb = count + n, squares + n**2, nb + 1
    if count == 0:
        raise ConfigError("no training examples to average the gradient over")
    means = {label: [s / count for s in ss[0]] for label, ss in sums.items()}

    def noise(label: str) -> float | None:
        _, cross, sq = sums[label]
        terms = zip(means[label], cross, sq, strict=True)
        var = sum(float((q - 2 * m * c + m.square() * squares).sum()) for m, c, q in terms)
        return math.sqrt(max(var, 0.0) * nb / (nb - 1)) / count if nb > 1 else None

    grads = {label: dict(zip(params, ms, strict=True)) for label, ms in means.items()}
    return grads, count, {label: noise(label) for label in contexts}


def summarise(grads: Grads) -> dict:
    """Norms (each layer's and the total, of the whole concatenated gradient) and cosines between variants."""
    labels = list(grads)
    own = labels[0]
    total = {a: float(torch.cat([g.flatten() for g in grads[a].values()]).norm()) for a in labels}
    return {
        "norms": {
            a: {"total": total[a], "layers": {n: float(g.norm()) for n, g in grads[a].items()}}
            for a in labels
        },
        "ratio_to_own": {a: finite(total[a] / total[own]) if total[own] else None for a in labels},
        "cosine": {
            a: {b: finite(cosine(list(grads[a].values()), list(grads[b].values()))) for b in labels}
            for a in labels
        },
        "layer_cosine": {
            a: {
                b: {n: finite(cosine([grads[a][n]], [grads[b][n]])) for n in grads[a]}
                for b in labels
                if b != a
            }
            for a in labels
        },
    }


def gradients_at(path, overrides=(), stes=PAPER_STES, subset: int | None = None, device: str = "cpu") -> dict:
    """gradients.json's content for a run dir or checkpoint (module docstring)."""
    module, config = load_run(path, overrides)
    extra = ["data.augment=false"] if "augment" in config.data else []  # ḡ of the training set itself
    if subset is not None:
        if "train_subset" not in config.data:
            raise ConfigError(f"--subset: data {config.data._target_} has no train_subset (infinite data)")
        extra.append(f"data.train_subset={subset}")
    config = OmegaConf.merge(config, OmegaConf.from_dotlist(extra))
    datamodule = instantiate(config.data)
    datamodule.prepare_data()
    datamodule.setup("fit")
    model = module.model.to(device)
    grads, count, noise = full_batch_gradients(model, module.loss_fn, datamodule.train_dataloader(), stes)
    layers = quantized_layers(model)
    return {
        "checkpoint": str(checkpoint_file(str(path))),
        "run_name": config.get("run_name"),
        "ste": next(iter(grads)),
        "bits": sorted({m.bits for m in layers.values()}),
        "alpha": {n: float(used_alpha(m)) for n, m in layers.items()},  # the run's α, as the forward uses it
        "mode": "eval",  # BN normalises with its running statistics
        "examples": count,
        "split": "train" + (f" (first {subset})" if subset is not None else "") + ", not augmented",
        "weights": "every Conv/Linear weight (src.diagnostics.weight_params)",
        "overrides": [*overrides, *extra],
        "variants": list(grads),
        "layers": list(next(iter(grads.values()))),
        "noise": noise,  # ‖SE(ḡ)‖ per variant: pure noise gives ‖ḡ‖ ≈ ‖SE‖
    } | summarise(grads)


def fmt(x) -> str:
    return "–" if x is None else f"{x:.4g}"


def markdown(record: dict, command: str) -> str:
    """gradients.md: the per-variant table, the per-layer norms and the cosine matrix."""
    own, labels, norms = record["ste"], record["variants"], record["norms"]
    lines = [
        f"# Full-batch coarse gradients: {record['run_name']}",
        "",
        f"`{command}` — checkpoint `{record['checkpoint']}`; {record['examples']} examples ({record['split']}); "
        f"eval-mode BN; the run's α; own STE `{own}`; gradients of {record['weights']}.",
        "",
        f"| backward | ‖ḡ‖ | ‖SE(ḡ)‖ | ‖ḡ‖ / ‖ḡ_{own}‖ | cos(ḡ, ḡ_{own}) | cos(ḡ, ḡ_{FLOAT}) |",
        "|---|---|---|---|---|---|",
    ]
    for a in labels:
        cos = record["cosine"][a]
        lines.append(
            f"| {a} | {fmt(norms[a]['total'])} | {fmt(record.get('noise', {}).get(a))} | "
            f"{fmt(record['ratio_to_own'][a])} | {fmt(cos[own])} | {fmt(cos[FLOAT])} |"
        )
    lines += [
        "",
        "‖ḡ‖ per layer:",
        "",
        "| layer | " + " | ".join(labels) + " |",
        "|---" * (len(labels) + 1) + "|",
    ]
    for n in record["layers"]:
        lines.append(f"| {n} | " + " | ".join(fmt(norms[a]["layers"][n]) for a in labels) + " |")
    lines += [
        "",
        "α per quantized activation: " + ", ".join(f"{n} {a:.4g}" for n, a in record["alpha"].items()),
    ]
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    parser = run_parser("python -m src.gradients", __doc__)
    parser.add_argument(
        "--stes", default=",".join(PAPER_STES), help="registry STEs to compare (comma-separated)"
    )
    parser.add_argument("--subset", type=int, help="only the first N training examples (data.train_subset)")
    parser.add_argument(
        "--out", type=Path, help="folder for gradients.json and gradients.md (default: run dir)"
    )
    parser.add_argument("--device", default="cpu", help="a torch device, e.g. cpu (default) or cuda")
    args = parser.parse_intermixed_args(argv)
    if args.subset is not None and args.subset < 1:
        sys.exit(f"error: --subset must be >= 1, got {args.subset}")
    stes = [s for s in args.stes.split(",") if s]
    try:
        record = gradients_at(args.path, args.overrides, stes, args.subset, args.device)
    except (ConfigError, DataError) as err:
        sys.exit(f"error: {err}")
    command = shlex.join(["python", "-m", "src.gradients", *(argv if argv is not None else sys.argv[1:])])
    out = args.out or run_dir(Path(record["checkpoint"]))
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / "gradients.json", json.dumps(record | {"command": command}, indent=2).encode())
    text = markdown(record, command)
    atomic_write(out / "gradients.md", text.encode())
    print(text + f"\n({out / 'gradients.json'})")


if __name__ == "__main__":
    main()
