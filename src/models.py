"""The networks of the paper (§5) and the two-layer model (§1), looked up by name in one registry.

Every model takes ``act``, a factory of activation modules (a partial ``QuantReLU``), ``in_shape`` (the input
shape without the batch) and ``num_classes``. Each activation is preceded by BatchNorm without affine
(``affine=False``), so its input is roughly unit Gaussian and one fixed α (Lloyd's) fits every layer, as in
HWGQ and the paper. The logits are never quantized.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from src.models_imagenet import ResNet18
from src.quant import QuantReLU
from src.quant.weights import WeightQuantizer, quantize_weights
from src.registry import Registry

ActFactory = Callable[[], nn.Module]
MODELS = Registry("model")  # name -> constructor (act, in_shape, num_classes, **sizes) -> nn.Module
COMPILE_MODES = (
    "default",
    "reduce-overhead",
    "max-autotune",
    "max-autotune-no-cudagraphs",
)  # torch.compile's


def build_model(
    name: str,
    act: ActFactory = QuantReLU,
    in_shape=(3, 32, 32),
    num_classes=10,
    channels_last: bool = False,
    compile: bool = False,
    compile_mode: str = "default",
    wquant: WeightQuantizer | None = None,
    **sizes,
) -> nn.Module:
    """Build a registry model; ``sizes`` are the architecture's own size arguments (from conf/model).

    ``channels_last`` stores conv weights and inputs NHWC (faster for ResNet-20 on CPU and CUDA, see
    benchmarks/bench_train.py); a pre-hook converts every input, and the state dict is the same either way.
    ``compile`` runs the forward through torch.compile (``compile_mode``: default, reduce-overhead,
    max-autotune); ``nn.Module.compile`` works in place, so the state-dict keys, and checkpoints, stay the same.
    ``wquant`` (conf/wquant) quantizes the conv/linear weights; None or fp leaves them float.
    """
    constructor = MODELS.lookup(name)
    if compile_mode not in COMPILE_MODES:  # torch.compile itself would only complain at the first forward
        raise ValueError(f"compile_mode must be one of {COMPILE_MODES}, got {compile_mode!r}")
    model = constructor(act=act, in_shape=tuple(in_shape), num_classes=num_classes, **sizes)
    if wquant is not None:
        quantize_weights(model, wquant)
    if channels_last:
        model.to(memory_format=torch.channels_last)
        model.register_forward_pre_hook(_to_channels_last)
    if compile:
        model.compile(mode=compile_mode)
    return model


def _to_channels_last(module, args):
    x, *rest = args
    return (x.contiguous(memory_format=torch.channels_last), *rest) if x.dim() == 4 else None


def conv_bn_act(c_in: int, c_out: int, act: ActFactory, kernel=3, stride=1, padding=1) -> list[nn.Module]:
    """conv → BN(affine=False) → quantized activation. The conv has no bias: the BN after it removes any shift."""
    return [
        nn.Conv2d(c_in, c_out, kernel, stride, padding, bias=False),
        nn.BatchNorm2d(c_out, affine=False),
        act(),
    ]


@MODELS.register("lenet5")
def lenet5(act: ActFactory, in_shape, num_classes, channels=(6, 16), hidden=(120, 84)) -> nn.Module:
    """LeNet-5 (LeCun et al. 1998) with BN before each activation (the paper adds it).

    conv5x5(6, pad 2)-pool-conv5x5(16)-pool-FC120-FC84-FC10: the classic sizes; the paper gives none. Pad 2 makes
    a 28×28 MNIST digit behave like the original 32×32 input.
    """
    c, h, w = in_shape
    layers = [*conv_bn_act(c, channels[0], act, kernel=5, padding=2), nn.MaxPool2d(2)]
    layers += [*conv_bn_act(channels[0], channels[1], act, kernel=5, padding=0), nn.MaxPool2d(2)]
    flat = channels[1] * ((h // 2 - 4) // 2) * ((w // 2 - 4) // 2)  # 16·5·5 = 400 for 28×28
    layers.append(nn.Flatten())
    for n_in, n_out in zip((flat, *hidden[:-1]), hidden, strict=True):
        layers += [nn.Linear(n_in, n_out, bias=False), nn.BatchNorm1d(n_out, affine=False), act()]
    layers.append(nn.Linear(hidden[-1], num_classes))
    return nn.Sequential(*layers)


@MODELS.register("vgg11")
def vgg11(
    act: ActFactory,
    in_shape,
    num_classes,
    widths=(64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
):
    """VGG-11 for CIFAR (the author code's layout): conv3x3-BN-act blocks, 2×2 max-pools at "M", Linear(512, 10)."""
    layers, c = [], in_shape[0]
    for width in widths:
        if width == "M":
            layers.append(nn.MaxPool2d(2))
        else:
            layers += conv_bn_act(c, width, act)
            c = width
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(c, num_classes))  # 32×32 → 1×1 after five pools


class BasicBlock(nn.Module):
    """ResNet basic block: conv-BN-act-conv-BN, add the shortcut, then act (every ReLU quantized, author code)."""

    def __init__(self, c_in: int, c_out: int, stride: int, act: ActFactory):
        super().__init__()
        self.body = nn.Sequential(
            *conv_bn_act(c_in, c_out, act, stride=stride),
            nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False),
            nn.BatchNorm2d(c_out, affine=False),
        )
        self.act = act()
        self.pad = c_out - c_in  # option A: parameter-free shortcut, zero channels appended
        self.stride = stride

    def forward(self, x):
        shortcut = x[:, :, :: self.stride, :: self.stride]  # (B, C, H/s, W/s)
        if self.pad:
            shortcut = F.pad(
                shortcut, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2)
            )  # (B, C_out, ·, ·)
        return self.act(self.body(x) + shortcut)


@MODELS.register("resnet")
def resnet(act: ActFactory, in_shape, num_classes, depth=20, widths=(16, 32, 64)) -> nn.Module:
    """CIFAR ResNet (He et al. 2016) with option-A shortcuts: (depth−2)/6 blocks per stage, stride 2 between stages."""
    if (depth - 2) % 6:
        raise ValueError(f"resnet depth must be 6n+2, got {depth}")
    layers, c = conv_bn_act(in_shape[0], widths[0], act), widths[0]
    for stage, width in enumerate(widths):
        for block in range((depth - 2) // 6):
            layers.append(BasicBlock(c, width, 2 if stage and not block else 1, act))
            c = width
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, num_classes))


MODELS.register("resnet20")(partial(resnet, depth=20))


@MODELS.register("tiny")
def tiny(act: ActFactory, in_shape, num_classes, width=8) -> nn.Module:
    """A test-only conv net (one conv-BN-act block, 4×4 max-pool, linear head), so framework tests take seconds."""
    c, h, w = in_shape
    return nn.Sequential(
        *conv_bn_act(c, width, act),
        nn.MaxPool2d(4),
        nn.Flatten(),
        nn.Linear(width * (h // 4) * (w // 4), num_classes),
    )


class TwoLayer(nn.Module):
    """The paper's two-linear-layer CNN (§1): y = vᵀσ(Zw) for Z (B, m, n), σ from ``act`` (1{x>0} with bits=1, α=1).

    Autograd gives the paper's coarse gradient: v's true gradient (eq. 3) and the STE's for w (eq. 5).
    """

    loss = "half_mse"  # ℓ = ½(ŷ − y)², eq. (1)

    def __init__(self, act: ActFactory, in_shape, num_classes=None, init_scale=1.0):
        super().__init__()
        m, n = in_shape
        self.v = nn.Parameter(init_scale * torch.randn(m) / m**0.5)
        self.w = nn.Parameter(init_scale * torch.randn(n) / n**0.5)
        self.act = act()

    def forward(self, z):
        return self.act(z @ self.w) @ self.v  # (B, m, n) @ (n,) → (B, m) → (B,)


MODELS.register("two_layer")(TwoLayer)

MODELS.register("resnet18")(ResNet18)  # ImageNet models live in src/models_imagenet.py
