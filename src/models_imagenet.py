"""ResNet-18 for ImageNet (He et al. 2016) in torchvision's layout, with every ReLU a quantized activation.

Parameter names are torchvision's (conv1, bn1, layer1.0.conv1, ..., layer2.0.downsample.0, fc), so a torchvision
state dict initialises it (``python -m src.models_imagenet <torchvision .pth> <out .ckpt>``, then
``init.checkpoint=<out .ckpt>``), as every published 2-bit ResNet-18 starts from full-precision weights.

Quantization follows the 2-bit ResNet-18 literature (PACT, LSQ, DSQ, EWGS, APoT): every activation that feeds a
conv is quantized, including the stem's and each block's output; the image into the first conv and the logits stay
float; with conf/wquant, the first conv and the fc keep float weights (``wquant.first_last: float``). Unlike the
CIFAR models, BatchNorm is affine as in torchvision (its FP weights carry γ, β), so a learned α (quant=pact or
lsq) suits it better than the fixed Lloyd α, which assumes unit-Gaussian inputs.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import torch
from torch import nn

ActFactory = Callable[[], nn.Module]  # as src.models: a new activation module per call


class BasicBlock(nn.Module):
    """torchvision's BasicBlock: conv-BN-act-conv-BN, plus the shortcut (1×1 conv + BN when the shape changes,
    option B), then act."""

    def __init__(self, c_in: int, c_out: int, stride: int, act: ActFactory):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.act1 = act()
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.downsample = None
        if stride != 1 or c_in != c_out:
            self.downsample = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out)
            )
        self.act2 = act()

    def forward(self, x):
        out = self.act1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.act2(out + shortcut)


class ResNet18(nn.Module):
    """ImageNet stem (7×7 stride-2 conv, 3×3 stride-2 max-pool), 4 stages of 2 basic blocks, global pool, fc."""

    def __init__(self, act: ActFactory, in_shape, num_classes: int, widths=(64, 128, 256, 512)):
        super().__init__()
        self.conv1 = nn.Conv2d(in_shape[0], widths[0], 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.act = act()
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        c = widths[0]
        for i, width in enumerate(widths):
            stride = 1 if i == 0 else 2
            setattr(
                self,
                f"layer{i + 1}",
                nn.Sequential(BasicBlock(c, width, stride, act), BasicBlock(width, width, 1, act)),
            )
            c = width
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c, num_classes)

    def forward(self, x):
        x = self.maxpool(self.act(self.bn1(self.conv1(x))))  # (B, 64, H/4, W/4)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))  # (B, 512, H/32, W/32)
        return self.fc(torch.flatten(self.avgpool(x), 1))  # float logits (B, num_classes)


def from_torchvision(state: dict) -> dict:
    """A torchvision ResNet-18 state dict as a checkpoint ``init.checkpoint`` takes: keys under ``model.``."""
    return {"state_dict": {f"model.{k}": v for k, v in state.items()}}


def main(argv=None) -> None:
    """python -m src.models_imagenet <torchvision resnet18 .pth> <out .ckpt>: offline, no download."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        sys.exit("usage: python -m src.models_imagenet <torchvision resnet18 state dict .pth> <out .ckpt>")
    state = torch.load(args[0], map_location="cpu", weights_only=True)
    torch.save(from_torchvision(state.get("state_dict", state)), args[1])
    print(f"wrote {args[1]}: {len(state)} tensors; train with init.checkpoint={args[1]}")


if __name__ == "__main__":
    main()
