"""Convolutional nets for the Monte Carlo check: pre-activation ResNets and a small CNN.

The standard ResNet-18/34/50 (post-activation, He et al. 2016) and VGG-16 are the dev zoo's
(:mod:`benchmarks.zoo.resnet`, :mod:`benchmarks.zoo.cnn`). Here: the pre-activation ResNet of
He et al. 2016b ("Identity Mappings in Deep Residual Networks": x + conv(relu(bn(conv(relu(
bn(x)))))), projection shortcuts on relu(bn(x)) where the shape changes), with the same stem,
widths and He (fan-out) init as the zoo's; and a small conv-BN-ReLU-maxpool chain.
"""

from __future__ import annotations

import torch
from torch import nn

#: Blocks per stage (He et al. 2016, Table 1).
BLOCKS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3)}


class PreActBlock(nn.Module):
    """x + conv2(relu(bn2(conv1(relu(bn1(x)))))); a 1×1 projection of relu(bn1(x)) on a
    change of shape."""

    def __init__(self, c_in: int, c: int, stride: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(c_in)
        self.conv1 = nn.Conv2d(c_in, c, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, 1, 1, bias=False)
        self.relu = nn.ReLU()
        self.down = nn.Conv2d(c_in, c, 1, stride, bias=False) if stride != 1 or c_in != c else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, c_in, H, W) -> (N, c, H/s, W/s)
        a = self.relu(self.bn1(x))
        short = self.down(a) if self.down is not None else x
        return short + self.conv2(self.relu(self.bn2(self.conv1(a))))


class PreActResNet(nn.Module):
    """Pre-activation ResNet-``depth`` (18 or 34) for 10 classes; ``width`` of the first stage.

    ``stem`` "cifar" (a 3×3 conv, as He et al. 2016b on CIFAR) or "imagenet" (7×7/2 conv, BN,
    ReLU, 3×3/2 max pooling).
    """

    def __init__(self, depth: int = 18, width: int = 64, stem: str = "cifar"):
        super().__init__()
        if stem == "cifar":  # He et al. 2016b's CIFAR nets: one 3×3 conv, no pooling
            self.stem = nn.Sequential(nn.Conv2d(3, width, 3, 1, 1, bias=False))
        else:  # ImageNet: 7×7/2 conv, BN, ReLU, 3×3/2 max pooling
            self.stem = nn.Sequential(
                nn.Conv2d(3, width, 7, 2, 3, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
                nn.MaxPool2d(3, 2, 1),
            )  # fmt: skip
        blocks: list[nn.Module] = []
        c_in = width
        for i, n in enumerate(BLOCKS[depth]):
            c = width * 2**i
            for j in range(n):
                blocks.append(PreActBlock(c_in, c, 2 if (j == 0 and i > 0) else 1))
                c_in = c
        self.blocks = nn.Sequential(*blocks)
        self.bn = nn.BatchNorm2d(c_in)
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c_in, 10)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, 3, H, W) -> (N, 10)
        h = self.relu(self.bn(self.blocks(self.stem(x))))
        return self.fc(torch.flatten(self.pool(h), 1))


def conv_bn_chain(width: int = 64, depth: int = 4) -> nn.Sequential:
    """``depth`` × (3×3 conv, BN, ReLU), a 2×2 max pooling after every second; GAP; linear."""
    layers: list[nn.Module] = []
    c_in = 3
    for i in range(depth):
        layers += [nn.Conv2d(c_in, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU()]
        if i % 2 == 1:
            layers.append(nn.MaxPool2d(2))
        c_in = width
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 10)]
    model = nn.Sequential(*layers)
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            nn.init.zeros_(m.bias)
    return model


def conv_bn_flatten(width: int = 64) -> nn.Sequential:
    """Conv-BN-ReLU, 2×2 max pooling, a strided conv-BN-ReLU, then flatten (C·4·4) into an MLP
    head (the classic small-CNN head: every position has its own weights)."""
    model = nn.Sequential(
        nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(width, width, 3, stride=2, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
        nn.Flatten(), nn.Linear(width * 16, 128), nn.ReLU(), nn.Linear(128, 10),
    )  # fmt: skip
    return model
