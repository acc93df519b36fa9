"""Residual nets after He et al. (2016): ResNet-18/34/50/101/152 and a plain-34.

Written from the paper (Table 1; basic blocks for 18/34, bottleneck blocks for 50/101/152;
projection shortcuts, option B, where the shape changes) with the reference
implementation's init: convs Kaiming normal, fan_out, for ReLU; BN γ = 1, β = 0; optionally
γ = 0 in the last BN of each block (Goyal et al. 2017), so that every block starts as the
identity. The ImageNet stem (7×7/2 conv, 3×3/2 max-pool) is kept: a 32×32 input reaches
stage 4 at 1×1, which keeps the check at init to seconds.
"""

from __future__ import annotations

from functools import partial

import torch
from torch import nn

from .case import Case, Train
from .data import image_batch
from .mlp import CHANCE, sgd


class BasicBlock(nn.Module):
    """Two 3×3 convs with BN: relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))."""

    expansion = 1

    def __init__(self, c_in: int, c: int, stride: int, shortcut: bool = True):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)
        self.relu = nn.ReLU()
        self.last_bn = self.bn2
        self.shortcut = shortcut
        self.down = _projection(c_in, c, stride) if shortcut else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, c_in, H, W) -> (N, c, H/s, W/s)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.shortcut:
            out = out + (self.down(x) if self.down is not None else x)
        return self.relu(out)


class Bottleneck(nn.Module):
    """1×1 reduce, 3×3 (stride here, as the reference implementation), 1×1 expand ×4."""

    expansion = 4

    def __init__(self, c_in: int, c: int, stride: int, shortcut: bool = True):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)
        self.conv3 = nn.Conv2d(c, 4 * c, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(4 * c)
        self.relu = nn.ReLU()
        self.last_bn = self.bn3
        self.shortcut = shortcut
        self.down = _projection(c_in, 4 * c, stride) if shortcut else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, c_in, H, W) -> (N, 4c, H/s, W/s)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.shortcut:
            out = out + (self.down(x) if self.down is not None else x)
        return self.relu(out)


def _projection(c_in: int, c_out: int, stride: int) -> nn.Module | None:
    """Option B: a 1×1 conv + BN where the shape changes, the identity elsewhere."""
    if stride == 1 and c_in == c_out:
        return None
    return nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))


#: Blocks per stage (He et al. 2016, Table 1).
LAYOUT = {18: (BasicBlock, (2, 2, 2, 2)), 34: (BasicBlock, (3, 4, 6, 3)),
          50: (Bottleneck, (3, 4, 6, 3)), 101: (Bottleneck, (3, 4, 23, 3)),
          152: (Bottleneck, (3, 8, 36, 3))}


class ResNet(nn.Module):
    """ResNet-``depth`` (or its plain counterpart, ``shortcut=False``) for 10 classes.

    ``width`` is the first stage's width (64 in the paper; the training runs use 8).
    """

    def __init__(self, depth: int, width: int = 64, shortcut: bool = True,
                 zero_init_last_bn: bool = False):
        super().__init__()
        block, counts = LAYOUT[depth]
        self.stem = nn.Sequential(
            nn.Conv2d(3, width, 7, 2, 3, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
            nn.MaxPool2d(3, 2, 1),
        )  # (N, 3, H, W) -> (N, width, H/4, W/4)
        stages: list[nn.Module] = []
        c_in = width
        for i, n in enumerate(counts):
            c = width * 2**i
            blocks = []
            for j in range(n):
                blocks.append(block(c_in, c, 2 if (j == 0 and i > 0) else 1, shortcut))
                c_in = c * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)  # -> (N, c_in, H/32, W/32)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c_in, 10)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_last_bn:
            for m in self.modules():
                if isinstance(m, BasicBlock | Bottleneck):
                    nn.init.zeros_(m.last_bn.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, 3, H, W) -> (N, 10)
        return self.fc(torch.flatten(self.pool(self.stages(self.stem(x))), 1))


def _case(name: str, depth: int, *, shortcut: bool = True, zero: bool = False,
          source: str, drop: float = 0.3, why: str = "", quick: bool = False) -> Case:
    return Case(
        name=name, family="resnet",
        model=partial(ResNet, depth, 64, shortcut, zero),
        batch=partial(image_batch, 10_000, size=32, batch=8),
        expect_init="healthy", expect_run="healthy", source=source, why=why, quick=quick,
        # SGD at lr 0.01: the rate He et al. (2016, §4.2) start their 110-layer net with
        # ("0.1 is slightly too large to start converging"); 200 steps at 1/8 width.
        train=Train(steps=200, optimizer=sgd(0.01), outcome="trains", baseline=CHANCE,
                    drop=drop,
                    batch=partial(image_batch, size=32, batch=16),
                    model=partial(ResNet, depth, 8, shortcut, zero)),
    )


PAPER = "He et al. 2016, §4.1, Table 2-3 and Fig. 4: ResNet-{d} trains with the standard recipe"
GOYAL = ("Goyal et al. 2017, §5.1: γ = 0 in each block's last BN (blocks start as the "
         "identity) trains, and eases large-batch training")

CASES = [
    _case("resnet18", 18, source=PAPER.format(d=18), quick=True),
    _case("resnet18_zero_init", 18, zero=True, source=GOYAL),
    _case("resnet34", 34, source=PAPER.format(d=34)),
    _case("plain34", 34, shortcut=False,
          source="He et al. 2016, §4.1 and Fig. 4: plain-34 (BN) trains, to a higher error "
                 "than plain-18 (degradation); 'backward propagated gradients exhibit healthy "
                 "norms with BN', so it is not vanishing",
          drop=0.1,
          why="Deep plain nets degrade for a reason other than vanishing gradients: their "
              "gradients are healthy. In the zoo's run it trains, more slowly than resnet34 "
              "(hence the smaller stated drop, 10% below chance)."),
    _case("resnet50", 50, source=PAPER.format(d=50)),
    _case("resnet50_zero_init", 50, zero=True, source=GOYAL),
    _case("resnet101", 101, source=PAPER.format(d=101),
          why="With BN the back-propagated signal grows toward the input at init (Yang et "
              "al. 2019 predict this for deep BN nets); it trains with the standard recipe, "
              "so that growth is not 'exploding'."),
    _case("resnet152", 152, source=PAPER.format(d=152)),
    _case("resnet152_zero_init", 152, zero=True, source=GOYAL),
]
