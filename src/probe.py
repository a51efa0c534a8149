"""The descent probe: does the STE's coarse gradient point downhill on the true (quantized) loss of a deep net?

The deep-net counterpart of the paper's ⟨E[g], ∇f⟩ > 0 (Lemmas 5, 7, 10). On a fixed probe batch and the current
weights w (every parameter that the coarse gradient reaches), it measures

* ℓ(w): the loss of the quantized forward, piecewise constant in every weight that feeds a quantized activation;
* Δℓ(t) = ℓ(w + t·d/‖d‖) − ℓ(w) for each step length t, along d = −coarse gradient (the model's own STE),
  a random direction and d = −the gradient of the same weights with every QuantReLU a float ReLU;
* ĝ, an antithetic estimate of the gradient of the Gaussian-smoothed loss f_σ(w) = E_ε ℓ(w + Sε),

      ĝ = (1/2N) Σ_i (ℓ(w + Sε_i) − ℓ(w − Sε_i)) S⁻¹ε_i,     ε_i ~ N(0, I),  E[ĝ] = ∇f_σ(w)  (Stein's identity),

  and its cosine to the coarse and float-ReLU gradients.

σ is relative, per parameter tensor: S = diag(σ_k) with σ_k = σ·rms(w_k), so every tensor moves by about σ·‖w_k‖.
Why: before a BN without affine the loss is invariant to each weight tensor's scale, and tensors differ in scale by
orders of magnitude (conv1 against the FC layers of LeNet-5), so one absolute σ would smooth some layers away and
leave others piecewise constant. An all-zero tensor (a zero-initialised bias) gets σ itself, absolute.

In d dimensions with N ≪ d samples the cosine shrinks towards 0 by about √(N/(N+d)) even for an exact gradient
(‖ĝ‖ is inflated by noise), so compare cosines only at equal N and d. ``descent/smooth_slope(_fp)`` =
⟨ĝ, −g/‖g‖⟩, the slope of f_σ along the unit negative coarse (float-ReLU) gradient, is unbiased and has no such
shrinkage: negative means the direction descends f_σ; ``…_se`` is its standard error over the N antithetic pairs, so
a slope is told from 0 by its own spread. ``descent/smooth_cos_noise`` = 1/√d, the size of the cosine of two random
directions in d dimensions, beside which a cosine must be read.

The weights are never written: every perturbed loss runs through ``torch.func.functional_call``; gradients come
from ``torch.autograd.grad``, so ``.grad`` fields stay as they were. BN runs in eval mode (running statistics are
read, not updated) and every module's training flag is restored afterwards. Not vmapped over ε: the quantizer's
autograd.Function has no vmap rule (no setup_context), and the N forwards dominate the cost either way.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call

from src.quant import QuantReLU

Batch = tuple[torch.Tensor, torch.Tensor]
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

# Step lengths t along a unit direction, in parameter space (L2 over all probed tensors); LeNet-5's ‖w‖ ≈ 9 at init.
STEPS = (0.01, 0.03, 0.1, 0.3, 1.0)
SMOOTH_SIGMA = 0.05  # relative per tensor: each tensor moves by ≈ 5 % of its norm
SMOOTH_SAMPLES = 64  # antithetic pairs N: 2N forwards, a few seconds for LeNet-5 on 256 examples (1 thread)


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Put every module in eval mode (BN reads its running stats); restore each module's own flag afterwards."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, flag in flags:
            m.training = flag


@contextmanager
def float_relu(model: nn.Module) -> Iterator[None]:
    """Switch every quantized QuantReLU to a float ReLU (bits=None) for the duration; restore its bits."""
    quantized = [(m, m.bits) for m in model.modules() if isinstance(m, QuantReLU) and m.bits is not None]
    try:
        for m, _ in quantized:
            m.bits = None
        yield
    finally:
        for m, bits in quantized:
            m.bits = bits


@dataclass
class Probed:
    """The probed parameters (those the coarse gradient reaches, model order) and ℓ at any flat point."""

    model: nn.Module
    loss_fn: LossFn
    batch: Batch
    names: list[str]
    params: list[torch.Tensor]

    def flat(self) -> torch.Tensor:
        """The current weights as one vector (a copy)."""
        return flatten([p.detach() for p in self.params], self.params)

    def loss(self, flat: torch.Tensor) -> float:
        """ℓ at the weights ``flat`` (the rest as in the model), without writing the model's parameters."""
        chunks = flat.split([p.numel() for p in self.params])
        weights = {n: c.view_as(p) for n, c, p in zip(self.names, chunks, self.params, strict=True)}
        x, y = self.batch
        with torch.no_grad():
            return float(self.loss_fn(functional_call(self.model, weights, (x,)), y))

    def gradient(self) -> torch.Tensor:
        """Autograd's gradient of ℓ, flattened, zeros where none arrives (a learned α under a float ReLU)."""
        return flatten(gradient(self.model, self.loss_fn, self.batch, self.params), self.params)


def flatten(tensors, like: list[torch.Tensor]) -> torch.Tensor:
    """One vector of the tensors in order, zeros shaped like ``like`` where a tensor is None."""
    return torch.cat(
        [(torch.zeros_like(p) if t is None else t).reshape(-1) for t, p in zip(tensors, like, strict=True)]
    )


def gradient(model: nn.Module, loss_fn: LossFn, batch: Batch, params: list[torch.Tensor]) -> tuple:
    """Autograd's gradient of ℓ per parameter (None where none arrives); the .grad fields stay untouched."""
    x, y = batch
    with torch.enable_grad():
        return torch.autograd.grad(loss_fn(model(x), y), params, allow_unused=True)


def probe_params(model: nn.Module, loss_fn: LossFn, batch: Batch) -> tuple[Probed, torch.Tensor]:
    """The parameters that the coarse gradient reaches, and that gradient flattened (model order)."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    grads = gradient(model, loss_fn, batch, [p for _, p in named])
    kept = [(n, p, g) for (n, p), g in zip(named, grads, strict=True) if g is not None]
    if not kept:
        raise ValueError("descent probe: no parameter receives a gradient from the loss")
    names, params, grads = (list(c) for c in zip(*kept, strict=True))
    return Probed(model, loss_fn, batch, names, params), flatten(grads, params)


def smoothing_scales(params: list[torch.Tensor], sigma: float) -> torch.Tensor:
    """Per-coordinate σ_k = σ·rms(w_k) for tensor k (σ itself for an all-zero tensor), flattened."""
    scales = []
    for p in params:
        rms = float(p.detach().pow(2).mean().sqrt())
        scales.append(
            torch.full((p.numel(),), sigma * rms if rms > 0 else sigma, dtype=p.dtype, device=p.device)
        )
    return torch.cat(scales)


def smoothed_grad(
    probed: Probed, sigma: float, samples: int, gen: torch.Generator, along=()
) -> tuple[torch.Tensor, torch.Tensor]:
    """ĝ = (1/2N) Σ (ℓ(w + Sε) − ℓ(w − Sε)) S⁻¹ε over N antithetic pairs (module docstring), flattened, and each
    pair's own estimate ĝ_i projected on every unit vector of ``along``: (N, len(along)), whose column means are
    ⟨ĝ, u⟩ and whose spread gives their standard errors.

    ε is drawn on the CPU from ``gen`` and moved, so a seed gives the same ε on any device.
    """
    w = probed.flat()
    scale = smoothing_scales(probed.params, sigma)
    g_hat = torch.zeros_like(w)
    units = torch.stack(list(along)) if len(along) else w.new_zeros(0, w.numel())  # (k, d)
    projections = []
    for _ in range(samples):
        eps = torch.randn(w.numel(), generator=gen, dtype=w.dtype).to(w.device)
        delta = scale * eps
        g_i = (
            (probed.loss(w + delta) - probed.loss(w - delta)) * eps / scale / 2
        )  # one pair's estimate of ∇f_σ
        g_hat += g_i
        projections.append(units @ g_i)
    return g_hat / samples, torch.stack(projections) if projections else units.new_zeros(0, len(units))


def line_deltas(probed: Probed, direction: torch.Tensor, steps, base: float) -> list[float]:
    """Δℓ(t) = ℓ(w + t·d/‖d‖) − ℓ(w) for each t; NaN when d = 0 (no direction)."""
    norm = float(direction.norm())
    if norm == 0:
        return [math.nan] * len(steps)
    w, unit = probed.flat(), direction / norm
    return [probed.loss(w + t * unit) - base for t in steps]


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """cos(a, b); NaN when either is 0."""
    denom = float(a.norm() * b.norm())
    return float(a @ b) / denom if denom > 0 else math.nan


def unit(direction: torch.Tensor) -> torch.Tensor:
    """direction/‖direction‖; NaN everywhere when it is 0 (no direction: its slope is undefined)."""
    norm = direction.norm()
    return direction / norm if norm > 0 else torch.full_like(direction, math.nan)


def mean_and_se(values: torch.Tensor) -> tuple[float, float]:
    """Mean of N values and its standard error (sample std / √N; NaN for N < 2)."""
    n = len(values)
    se = float(values.std() / math.sqrt(n)) if n > 1 else math.nan
    return float(values.mean()), se


def descent_probe(
    model: nn.Module,
    loss_fn: LossFn,
    batch: Batch,
    steps=STEPS,
    smooth_sigma: float = SMOOTH_SIGMA,
    smooth_samples: int = SMOOTH_SAMPLES,
    seed: int = 0,
) -> dict[str, float]:
    """Loss changes along −coarse, random and −float-ReLU directions, and the smoothed-gradient cosines (module doc).

    Keys: descent/loss, descent/{coarse,random,fp}/<t:g>, and unless smooth_samples = 0 descent/smooth_cos,
    descent/smooth_cos_fp, descent/smooth_cos_noise (1/√d, the cosine's noise level), descent/smooth_slope,
    descent/smooth_slope_fp and their standard errors (…_se, over the N pairs). One CPU generator seeded with ``seed``
    draws the random direction, then the ε samples.
    """
    device = next(model.parameters()).device
    batch = tuple(t.to(device) for t in batch)
    gen = torch.Generator().manual_seed(seed)
    with eval_mode(model):
        probed, g_coarse = probe_params(model, loss_fn, batch)
        with float_relu(model):
            g_fp = probed.gradient()
        w = probed.flat()
        base = probed.loss(w)
        random = torch.randn(w.numel(), generator=gen, dtype=w.dtype).to(device)
        out = {"descent/loss": base}
        for label, d in (("coarse", -g_coarse), ("random", random), ("fp", -g_fp)):
            deltas = line_deltas(probed, d, steps, base)
            out |= {f"descent/{label}/{t:g}": delta for t, delta in zip(steps, deltas, strict=True)}
        if smooth_samples == 0:
            return out
        g_hat, along = smoothed_grad(
            probed, smooth_sigma, smooth_samples, gen, [unit(-g_coarse), unit(-g_fp)]
        )
    (slope, slope_se), (slope_fp, slope_fp_se) = mean_and_se(along[:, 0]), mean_and_se(along[:, 1])
    return out | {
        "descent/smooth_cos": cosine(g_hat, g_coarse),
        "descent/smooth_cos_fp": cosine(g_hat, g_fp),
        "descent/smooth_cos_noise": 1
        / math.sqrt(w.numel()),  # |cos| of two random directions in d dimensions
        "descent/smooth_slope": slope,
        "descent/smooth_slope_se": slope_se,
        "descent/smooth_slope_fp": slope_fp,
        "descent/smooth_slope_fp_se": slope_fp_se,
    }
