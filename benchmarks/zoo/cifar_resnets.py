"""CIFAR-style residual nets and their relatives, written after their papers.

One frame, :class:`CifarNet`, after He et al. (2016, §4.2): a 3×3 stem, three stages of
``n`` blocks at widths (w, 2w, 4w), the first block of stages 2 and 3 strided, global average
pooling and a linear classifier. The blocks:

- ``preact``: pre-activation block, BN-ReLU-conv-BN-ReLU-conv + x (He et al. 2016b,
  "Identity Mappings in Deep Residual Networks"), a final BN-ReLU before the pooling;
- ``wide``: the pre-activation block with dropout between the convs (Zagoruyko & Komodakis
  2016, WRN-d-k: widths 16k, 32k, 64k);
- ``se``: the basic post-activation block with squeeze-and-excitation (Hu et al. 2018): the
  second BN's output is scaled per channel by σ(W2 relu(W1 avgpool(·))), reduction r;
- ``gn``: the basic block with GroupNorm instead of BN (Wu & He 2018);
- ``nonorm``: the basic block without any normalization, relu(conv(relu(conv x)) + x), He
  init (the recipe of a BN ResNet with the BN removed);
- ``skipinit``: the same block with its branch multiplied by a scalar α that starts at 0
  (SkipInit, De & Smith 2020): every block starts as the identity, as BN makes it in effect.

Shortcuts where the shape changes are a strided 1×1 conv (+ the block's norm), except for
``nonorm`` and ``skipinit``, which use He et al.'s option A (subsample and pad the new
channels with zeros: no parameters, nothing to normalise).

Also here: :func:`plain_bn` (a deep conv-BN-ReLU stack with no shortcut; Yang et al. 2019).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn


def _he_(model: nn.Module) -> nn.Module:
    """Conv weights N(0, 2/fan_in) (He et al. 2015), biases 0; norms at γ = 1, β = 0."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d | nn.GroupNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    return model


def _norm(kind: str, c: int) -> nn.Module:
    if kind == "gn":
        return nn.GroupNorm(max(1, c // 4), c)  # groups of 4 channels (Wu & He 2018, Table 3)
    return nn.BatchNorm2d(c)


def _project(c_in: int, c_out: int, stride: int, norm: str | None) -> nn.Module | None:
    if stride == 1 and c_in == c_out:
        return None
    layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, 1, stride, bias=False)]
    if norm is not None:
        layers.append(_norm(norm, c_out))
    return nn.Sequential(*layers)


def _option_a(x: torch.Tensor, c_out: int, stride: int) -> torch.Tensor:
    """He et al. 2016, option A: subsample by ``stride``, pad the extra channels with zeros."""
    if stride > 1:
        x = x[:, :, ::stride, ::stride]
    if x.shape[1] < c_out:
        x = F.pad(x, (0, 0, 0, 0, 0, c_out - x.shape[1]))
    return x


class PreActBlock(nn.Module):
    """x + conv(relu(bn(drop(conv(relu(bn(x))))))): He et al. 2016b; dropout as WRN."""

    def __init__(self, c_in: int, c: int, stride: int, drop: float = 0.0):
        super().__init__()
        self.bn1, self.relu1 = nn.BatchNorm2d(c_in), nn.ReLU()
        self.conv1 = nn.Conv2d(c_in, c, 3, stride, 1, bias=False)
        self.bn2, self.relu2 = nn.BatchNorm2d(c), nn.ReLU()
        self.drop = nn.Dropout(drop) if drop > 0 else nn.Identity()
        self.conv2 = nn.Conv2d(c, c, 3, 1, 1, bias=False)
        self.down = _project(c_in, c, stride, None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, c_in, H, W) -> (N, c, H/s, W/s)
        pre = self.relu1(self.bn1(x))
        short = x if self.down is None else self.down(pre)  # the projection sees the BN-ReLU
        out = self.conv1(pre)
        out = self.conv2(self.drop(self.relu2(self.bn2(out))))
        return out + short


class BasicBlock(nn.Module):
    """relu(norm(conv(relu(norm(conv x)))) [· SE] + shortcut(x)), BN or GroupNorm."""

    def __init__(self, c_in: int, c: int, stride: int, norm: str = "bn", se: int = 0):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c, 3, stride, 1, bias=False)
        self.n1, self.relu1 = _norm(norm, c), nn.ReLU()
        self.conv2 = nn.Conv2d(c, c, 3, 1, 1, bias=False)
        self.n2 = _norm(norm, c)
        self.se = SqueezeExcite(c, se) if se else None
        self.down = _project(c_in, c, stride, norm)
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.n2(self.conv2(self.relu1(self.n1(self.conv1(x)))))
        if self.se is not None:
            out = self.se(out)
        return self.relu2(out + (x if self.down is None else self.down(x)))


class SqueezeExcite(nn.Module):
    """x · σ(W2 relu(W1 mean_hw(x))) per channel (Hu et al. 2018, Fig. 3), reduction r."""

    def __init__(self, c: int, r: int):
        super().__init__()
        self.fc1 = nn.Linear(c, max(1, c // r))
        self.relu = nn.ReLU()
        self.fc2 = nn.Linear(max(1, c // r), c)
        self.gate = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.gate(self.fc2(self.relu(self.fc1(x.mean((2, 3))))))  # (N, C)
        return x * s[:, :, None, None]


class NoNormBlock(nn.Module):
    """relu(α · conv2(relu(conv1 x)) + option_a(x)), no normalization; α is a learnt scalar
    starting at 0 with ``skipinit=True`` (De & Smith 2020), else absent (α = 1)."""

    def __init__(self, c_in: int, c: int, stride: int, skipinit: bool = False):
        super().__init__()
        self.c, self.stride = c, stride
        self.conv1 = nn.Conv2d(c_in, c, 3, stride, 1)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(c, c, 3, 1, 1)
        self.relu2 = nn.ReLU()
        self.alpha = nn.Parameter(torch.zeros(1)) if skipinit else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv2(self.relu1(self.conv1(x)))
        if self.alpha is not None:
            out = self.alpha * out
        return self.relu2(out + _option_a(x, self.c, self.stride))


class CifarNet(nn.Module):
    """Stem, three stages of ``n`` blocks at widths (w, 2w, 4w), pooling, classifier.

    ``block``: "preact", "wide", "se", "gn", "nonorm" or "skipinit" (module docstring).
    ``width`` is w (16 in He et al.; 16k for WRN-d-k).
    """

    def __init__(self, block: str, n: int, width: int = 16, drop: float = 0.0, se: int = 4,
                 classes: int = 10):
        super().__init__()
        self.stem = nn.Conv2d(3, 16 if block == "wide" else width, 3, 1, 1,
                              bias=block in ("nonorm", "skipinit"))
        if block in ("preact", "wide"):  # the first block starts with its own BN-ReLU
            self.stem_act: nn.Module = nn.Identity()
        elif block in ("nonorm", "skipinit"):
            self.stem_act = nn.ReLU()
        else:
            self.stem_act = nn.Sequential(_norm("gn" if block == "gn" else "bn", width),
                                          nn.ReLU())
        c_in = self.stem.out_channels
        blocks: list[nn.Module] = []
        for i in range(3):
            c = width * 2**i
            for j in range(n):
                stride = 2 if (j == 0 and i > 0) else 1
                if block in ("preact", "wide"):
                    blocks.append(PreActBlock(c_in, c, stride, drop))
                elif block in ("nonorm", "skipinit"):
                    blocks.append(NoNormBlock(c_in, c, stride, skipinit=block == "skipinit"))
                else:
                    blocks.append(BasicBlock(c_in, c, stride, "gn" if block == "gn" else "bn",
                                             se if block == "se" else 0))
                c_in = c
        self.blocks = nn.Sequential(*blocks)
        self.final = (nn.Sequential(nn.BatchNorm2d(c_in), nn.ReLU())
                      if block in ("preact", "wide") else nn.Identity())
        self.fc = nn.Linear(c_in, classes)
        _he_(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, 3, H, W) -> (N, classes)
        h = self.blocks(self.stem_act(self.stem(x)))
        return self.fc(self.final(h).mean((2, 3)))


def plain_bn(convs_per_stage: int, width: int = 16) -> nn.Sequential:
    """``3 × convs_per_stage`` conv-BN-ReLU layers, no shortcut, widths (w, 2w, 4w), He init.

    The first conv of stages 2 and 3 has stride 2 (VGG without pooling, as the plain nets of
    He et al. 2016, Fig. 3); then global average pooling and a linear classifier.
    """
    layers: list[nn.Module] = []
    c_in = 3
    for i in range(3):
        c = width * 2**i
        for j in range(convs_per_stage):
            stride = 2 if (j == 0 and i > 0) else 1
            layers += [nn.Conv2d(c_in, c, 3, stride, 1, bias=False), nn.BatchNorm2d(c),
                       nn.ReLU()]
            c_in = c
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c_in, 10)]
    return _he_(nn.Sequential(*layers))

