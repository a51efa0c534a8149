"""Inside the STE: per-layer diagnostics of every quantized activation and the disagreement of STEs.

``Diagnostics`` (a Lightning callback, conf/train.yaml ``callbacks.diagnostics``) logs each epoch, for every
QuantReLU with ``bits`` set, in model order, under its module name relative to the model (``0``, ``4.body.2``):

- ``diag/<layer>/below``: fraction of pre-activations x ≤ 0 (level index k = 0);
- ``diag/<layer>/saturated``: fraction x > c = L·α (k = L+1: the clipped ReLU STE passes no gradient there);
- ``diag/<layer>/level<j>``: occupancy of output level j = 0..L (level L holds x > (L−1)α, saturated included),
  when there are at most ``max_levels`` levels; ``diag/<layer>/level_entropy``: their entropy in bits;
- ``diag/<layer>/grad_norm``: the L2 norm of ∂loss/∂x over the whole batch tensor (the loss is the batch mean),
  averaged over the sampled steps.

Counts are taken on every ``every_n_steps``-th training batch; fractions are over all sampled elements.
Every ``disagree_every_n_epochs`` epochs, on a probe batch fixed at the first training step, it logs the cosine
between the weight gradient of the run's STE and that of each STE in ``compare_to`` at the same weights:
``disagree/<other>`` (all weight gradients concatenated) and ``disagree/<other>/<layer>`` per Conv/Linear.
A learned α is logged by STEModule already (``alpha/<layer>``). A model without quantized activations (quant=fp)
gets no hook and logs nothing.
"""

from __future__ import annotations

import contextlib
import math

import numpy as np
import pytorch_lightning as pl
import torch
from torch import nn

import src.probe
from src.probe import cosine as flat_cosine
from src.quant import STES, QuantReLU, get_ste, level_index
from src.quant.quantizer import level_dtype

WEIGHTED = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def quantized_layers(model: nn.Module) -> dict[str, QuantReLU]:
    """Every quantized activation of ``model`` (bits set), in model order, by module name."""
    return {name: m for name, m in model.named_modules() if isinstance(m, QuantReLU) and m.bits is not None}


def used_alpha(m: QuantReLU) -> torch.Tensor:
    """The α the forward uses: a learned one floored as in QuantReLU.forward."""
    alpha = m.alpha.detach()
    return alpha if m.alpha_mode == "fixed" else alpha.clamp_min(m.alpha_floor)


def level_counts(x: torch.Tensor, alpha: torch.Tensor, levels: int) -> torch.Tensor:
    """Counts (L+2,) of the level index k = clamp(ceil(x/α), 0, L+1): 0 ⇔ x ≤ 0, L+1 ⇔ x > c = Lα.

    The quantizer's own arithmetic (float32 at least), so a count agrees with the forward at every boundary.
    """
    xf = x.detach().to(torch.promote_types(x.dtype, torch.float32))
    k = level_index(xf, alpha.to(xf.dtype), levels + 1)
    small = level_dtype(levels) or torch.int32  # bincount of one-byte ints: ~3× faster on CPU than of int64
    return torch.bincount(k.flatten().to(small), minlength=levels + 2)


def occupancy(counts: list[int], max_levels: int) -> dict[str, float]:
    """below, saturated, the output levels' occupancy (if at most ``max_levels`` levels) and its entropy in bits."""
    total, levels = sum(counts), len(counts) - 2
    if total == 0:
        return {}
    occupied = [*counts[:levels], counts[levels] + counts[levels + 1]]  # output level min(k, L)
    p = [n / total for n in occupied]
    out = {"below": counts[0] / total, "saturated": counts[-1] / total}
    if levels + 1 <= max_levels:
        out |= {f"level{j}": pj for j, pj in enumerate(p)}
    out["level_entropy"] = -sum(pj * math.log2(pj) for pj in p if pj > 0)
    return out


@contextlib.contextmanager
def swapped_ste(model: nn.Module, ste):
    """Every quantized activation's backward replaced by ``ste`` (a name or instance); restored on exit."""
    layers = quantized_layers(model).values()
    saved = [m.ste for m in layers]
    try:
        for m in layers:
            m.ste = get_ste(ste)
        yield model
    finally:
        for m, s in zip(layers, saved, strict=True):
            m.ste = s


@contextlib.contextmanager
def isolated(model: nn.Module):
    """The model in eval mode (BN uses and keeps its running statistics); on exit every weight, buffer, .grad,
    train/eval flag and RNG state is as before, so a probe cannot change the training that follows."""
    modes = [m.training for m in model.modules()]
    state = {k: v.clone() for k, v in model.state_dict(keep_vars=False).items()}
    # copies: a backward in the probe would add into the very .grad tensors
    grads = [(p, None if p.grad is None else p.grad.clone()) for p in model.parameters()]
    device = next(model.parameters()).device
    numpy_state = np.random.get_state()
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            model.eval()
            yield model
    finally:
        np.random.set_state(numpy_state)
        model.load_state_dict(state)
        for p, g in grads:
            p.grad = g
        for m, mode in zip(model.modules(), modes, strict=True):
            m.training = mode


def weight_params(model: nn.Module) -> dict[str, nn.Parameter]:
    """The weights the STEs are compared on: each Conv/Linear's weight by module name (biases have the same
    gradient under every STE once their layer's are equal); a model with none (two_layer) by parameter name."""
    found = {
        n: m.weight for n, m in model.named_modules() if isinstance(m, WEIGHTED) and m.weight.requires_grad
    }
    return found or {n: p for n, p in model.named_parameters() if p.requires_grad and not n.endswith("alpha")}


def weight_grads(model: nn.Module, loss_fn, batch, params: list[nn.Parameter]) -> list[torch.Tensor]:
    """∂loss/∂params on ``batch`` = (x, y) through the model's current STEs; .grad is left untouched."""
    x, y = batch
    with torch.enable_grad():
        grads = torch.autograd.grad(loss_fn(model(x), y), params, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g.detach() for p, g in zip(params, grads, strict=True)]


def cosine(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    """cos∠(a, b) of the concatenated tensors, in float64; nan when either is zero (no direction)."""
    return flat_cosine(*(torch.cat([t.double().flatten() for t in ts]) for ts in (a, b)))


def ste_disagreement(model: nn.Module, loss_fn, batch, others) -> dict[str, float]:
    """Cosine between the weight gradient of the model's own STEs and that of each STE in ``others`` at the same
    weights and batch: ``disagree/<other>`` overall and ``disagree/<other>/<layer>`` per weighted layer."""
    params = weight_params(model)
    own = weight_grads(model, loss_fn, batch, list(params.values()))
    out = {}
    for other in others:
        with swapped_ste(model, other):
            theirs = weight_grads(model, loss_fn, batch, list(params.values()))
        out[f"disagree/{other}"] = cosine(own, theirs)
        for name, g, h in zip(params, own, theirs, strict=True):
            out[f"disagree/{other}/{name}"] = cosine([g], [h])
    return out


class LayerStats:
    """One activation's running sums over the sampled steps, kept on its device (no sync per step)."""

    def __init__(self, module: QuantReLU, max_levels: int):
        self.module, self.max_levels = module, max_levels
        self.reset()

    def reset(self):
        self.counts, self.grad_norm_sum, self.grad_steps = 0, 0.0, 0

    def forward_hook(self, module, args, output):
        x = args[0]
        with torch.no_grad():
            self.counts = self.counts + level_counts(x, used_alpha(module), 2**module.bits - 1)
        if x.requires_grad:
            x.register_hook(self.grad_hook)  # called with ∂loss/∂x in backward; returns None: grad unchanged

    def grad_hook(self, grad):
        self.grad_norm_sum = self.grad_norm_sum + torch.linalg.vector_norm(grad.detach().float())
        self.grad_steps += 1

    def metrics(self, strategy) -> dict[str, float]:
        """The epoch's metrics, summed over data-parallel ranks."""
        if isinstance(self.counts, int):
            return {}
        out = occupancy(strategy.reduce(self.counts, reduce_op="sum").tolist(), self.max_levels)
        if self.grad_steps:
            out["grad_norm"] = float(strategy.reduce(self.grad_norm_sum / self.grad_steps, reduce_op="mean"))
        return out


class Diagnostics(pl.Callback):
    """Per-layer STE diagnostics every epoch and STE disagreement every few epochs (module docstring).

    The probe batch is the first ``probe_size`` examples of the first training batches of the run. It is
    saved in the checkpoint (``state_dict``), so a resumed run probes the very batch the uninterrupted run
    does and every ``disagree/`` and ``descent/`` value matches it. Probes run in eval mode under ``isolated``: BN normalises with its running
    statistics and leaves them untouched, and weights, grads, modes and RNG are restored, so training is the same
    with the callback as without. ``descent``: also run src.probe.descent_probe on the probe batch.
    """

    def __init__(
        self,
        every_n_steps: int = 20,
        max_levels: int = 16,
        disagree_every_n_epochs: int = 1,
        compare_to=("identity", "relu", "clipped_relu"),
        probe_size: int = 128,
        descent: bool = False,
        descent_every_n_epochs: int = 1,
        descent_knobs: dict | None = None,
    ):
        for key, value, low in [
            ("every_n_steps", every_n_steps, 1),
            ("max_levels", max_levels, 0),
            ("disagree_every_n_epochs", disagree_every_n_epochs, 0),
            ("probe_size", probe_size, 1),
            ("descent_every_n_epochs", descent_every_n_epochs, 1),
        ]:
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ValueError(f"callbacks.diagnostics.{key} must be an integer >= {low}, got {value!r}")
        if unknown := [s for s in compare_to if s not in STES]:
            raise ValueError(
                f"callbacks.diagnostics.compare_to: unknown ste(s) {unknown}; valid: {sorted(STES)}"
            )
        self.every_n_steps, self.max_levels, self.probe_size = every_n_steps, max_levels, probe_size
        self.disagree_every, self.compare_to = disagree_every_n_epochs, tuple(compare_to)
        self.descent_every = descent_every_n_epochs if descent else 0
        self.descent_knobs = dict(descent_knobs or {})
        self.layers: dict[str, LayerStats] = {}
        self.probe, self._handles, self._restored = None, [], False

    def state_dict(self) -> dict:
        """The probe batch (on the CPU), for a resumed run to probe the same examples."""
        return {} if self.probe is None else {"probe": tuple(t.cpu() for t in self.probe)}

    def load_state_dict(self, state_dict: dict) -> None:
        # Lightning restores callbacks before on_fit_start (after it for a few strategies): either way the
        # restored probe is kept; a checkpoint from before the probe was saved takes a new one
        if "probe" in state_dict:
            self.probe, self._restored = tuple(state_dict["probe"]), True

    def on_fit_start(self, trainer, pl_module):
        model = getattr(pl_module, "model", pl_module)
        self.layers = {n: LayerStats(m, self.max_levels) for n, m in quantized_layers(model).items()}
        if not self._restored:
            self.probe = None
        self._restored = False

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if not self.layers:
            return  # a float model: nothing to watch
        if self.probe is None or len(self.probe[0]) < self.probe_size:
            self._take_probe(batch)
        if batch_idx % self.every_n_steps == 0:
            self._handles = [s.module.register_forward_hook(s.forward_hook) for s in self.layers.values()]

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self._remove_hooks()  # after backward and the optimizer step

    def teardown(self, trainer, pl_module, stage):
        self._remove_hooks()  # a fit that stopped mid-step (an exception) leaves no hook behind

    def _remove_hooks(self):
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def _take_probe(self, batch):
        """Append the batch's examples (copied) to the probe until it holds probe_size."""
        x, y = batch
        if self.probe is not None:  # a restored probe is on the CPU
            x, y = torch.cat([self.probe[0].to(x.device), x]), torch.cat([self.probe[1].to(y.device), y])
        self.probe = (x[: self.probe_size].clone(), y[: self.probe_size].clone())

    def on_train_epoch_end(self, trainer, pl_module):
        if not self.layers:
            return
        metrics = {}
        for name, stats in self.layers.items():
            metrics |= {f"diag/{name}/{k}": v for k, v in stats.metrics(trainer.strategy).items()}
            stats.reset()
        epoch = trainer.current_epoch + 1
        if self.probe is not None and self.disagree_every and epoch % self.disagree_every == 0:
            metrics |= self._probe(trainer, pl_module, self._disagreement)
        if self.probe is not None and self.descent_every and epoch % self.descent_every == 0:
            metrics |= self._probe(trainer, pl_module, self._descent)
        # sync_dist: the mean over data-parallel ranks (diag/ sums are reduced already, so unchanged)
        pl_module.log_dict(metrics, on_step=False, on_epoch=True, sync_dist=True)

    def _probe(self, trainer, pl_module, probe) -> dict[str, float]:
        model = getattr(pl_module, "model", pl_module)
        self.probe = tuple(t.to(pl_module.device) for t in self.probe)  # a restored probe is on the CPU
        with isolated(model), trainer.precision_plugin.train_step_context():
            return probe(model, pl_module.loss_fn)

    def _disagreement(self, model, loss_fn) -> dict[str, float]:
        own = {m.ste.name for m in quantized_layers(model).values()}
        others = [s for s in self.compare_to if {s} != own]
        return ste_disagreement(model, loss_fn, self.probe, others)

    def _descent(self, model, loss_fn) -> dict[str, float]:
        # looked up in src.probe at each call: tests swap in a meddling fake
        return src.probe.descent_probe(model, loss_fn, self.probe, **self.descent_knobs)
