"""Residual nets: ResNet-18/34/50/101/152 and a plain-34 (He et al. 2016), a ConvNeXt (Liu et
al. 2022) and a ResNet without normalization.

The ResNets are written from the paper (Table 1; basic blocks for 18/34, bottleneck blocks
for 50/101/152; projection shortcuts, option B, where the shape changes) with the reference
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
          source: str, drop: float = 0.3, budget_s: float = 15.0, why: str = "",
          quick: bool = False) -> Case:
    return Case(
        name=name, family="resnet",
        model=partial(ResNet, depth, 64, shortcut, zero),
        batch=partial(image_batch, 10_000, size=32, batch=8),
        expect_init="healthy", expect_run="healthy", source=source, why=why, quick=quick,
        budget_s=budget_s,
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
    _case("resnet101", 101, source=PAPER.format(d=101), budget_s=30,
          why="With BN the back-propagated signal grows toward the input at init (Yang et "
              "al. 2019 predict this for deep BN nets); it trains with the standard recipe, "
              "so that growth is not 'exploding'."),
    _case("resnet152", 152, source=PAPER.format(d=152), budget_s=45),
    _case("resnet152_zero_init", 152, zero=True, source=GOYAL, budget_s=45),
]


class LayerNorm2d(nn.Module):
    """LayerNorm over the channels of (N, C, H, W), as ConvNeXt's stem and downsampling use."""

    def __init__(self, c: int):
        super().__init__()
        self.ln = nn.LayerNorm(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, C, H, W) -> (N, C, H, W)
        return self.ln(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class ConvNeXtBlock(nn.Module):
    """x + γ ⊙ pw2(GELU(pw1(LN(dw7×7(x))))), γ the per-channel layer scale, 1e-6 at init."""

    def __init__(self, c: int, layer_scale: float = 1e-6):
        super().__init__()
        self.dw = nn.Conv2d(c, c, 7, padding=3, groups=c)
        self.norm = nn.LayerNorm(c)
        self.pw1 = nn.Linear(c, 4 * c)
        self.act = nn.GELU()
        self.pw2 = nn.Linear(4 * c, c)
        self.gamma = nn.Parameter(torch.full((c,), layer_scale))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, C, H, W) -> same
        y = self.dw(x).permute(0, 2, 3, 1)  # (N, H, W, C)
        y = self.pw2(self.act(self.pw1(self.norm(y))))
        return x + (self.gamma * y).permute(0, 3, 1, 2)


class ConvNeXt(nn.Module):
    """ConvNeXt (Liu et al. 2022, §2 and Fig. 4): a 4×4/4 patchify stem with LN, stages of
    blocks with LN + 2×2/2 conv downsampling between them, global pooling, LN and a linear
    head; truncated normal init (std 0.02), biases 0, layer scale 1e-6 (ConvNeXt-T's
    stages are (96, 192, 384, 768) × (3, 3, 9, 3); ``dims`` and ``depths`` shrink it)."""

    def __init__(self, dims=(32, 64, 128, 256), depths=(2, 2, 6, 2), layer_scale=1e-6):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(3, dims[0], 4, 4), LayerNorm2d(dims[0])]
        for i, (d, n) in enumerate(zip(dims, depths, strict=True)):
            if i:
                layers += [LayerNorm2d(dims[i - 1]), nn.Conv2d(dims[i - 1], d, 2, 2)]
            layers += [ConvNeXtBlock(d, layer_scale) for _ in range(n)]
        self.features = nn.Sequential(*layers)  # (N, 3, H, W) -> (N, dims[-1], H/32, W/32)
        self.norm = nn.LayerNorm(dims[-1])
        self.head = nn.Linear(dims[-1], 10)
        for m in self.modules():
            if isinstance(m, nn.Conv2d | nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, 3, H, W) -> (N, 10)
        return self.head(self.norm(self.features(x).mean((2, 3))))


class NoNormBlock(nn.Module):
    """relu(x + conv2(relu(conv1(x)))): a basic block without batch norm."""

    def __init__(self, c: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, C, H, W) -> same
        return self.relu(x + self.conv2(self.relu(self.conv1(x))))


class NoNormResNet(nn.Module):
    """A ResNet of ``blocks`` basic blocks without normalization, He init (fan in, ReLU).

    Each block adds its branch's variance to the stream (He-init branches keep their input's
    variance), so the stream's variance doubles per block: 2^32 over 32 blocks (Zhang et al.
    2019, "Fixup initialization", §2)."""

    def __init__(self, blocks: int = 32, width: int = 16):
        super().__init__()
        self.stem = nn.Conv2d(3, width, 3, padding=1)
        self.relu = nn.ReLU()
        self.blocks = nn.Sequential(*[NoNormBlock(width) for _ in range(blocks)])
        self.fc = nn.Linear(width, 10)
        for m in self.modules():
            if isinstance(m, nn.Conv2d | nn.Linear):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, 3, H, W) -> (N, 10)
        return self.fc(self.blocks(self.relu(self.stem(x))).mean((2, 3)))


def adamw(lr: float, weight_decay: float = 0.05):
    """``model -> AdamW`` (ConvNeXt's optimizer, Liu et al. 2022, §2.1)."""
    return lambda model: torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)


CASES += [
    Case(
        name="convnext_layer_scale", family="resnet", model=ConvNeXt,
        batch=partial(image_batch, 10_000, size=32, batch=8),
        expect_init="healthy", expect_run="healthy",
        source="Liu et al. 2022 (ConvNeXt trains with AdamW; layer scale 1e-6, Touvron et al. "
               "2021); zoo training run: AdamW (lr 1e-3) takes the loss from 2.36 to 0.16 in "
               "200 steps at 1/2 width",
        train=Train(steps=200, optimizer=adamw(1e-3), outcome="trains", baseline=CHANCE,
                    batch=partial(image_batch, size=32, batch=16),
                    model=partial(ConvNeXt, (16, 32, 64, 128), (1, 1, 2, 1))),
        why="Every branch is scaled by γ = 1e-6 before it joins the stream, so the gradient "
            "inside the branches is 1e-6 of the stream's by design. Measured along the "
            "stream (at the joins) the gradient is flat: no vanishing. Its branches already "
            "start near zero, so zero-init of their last norm must not be offered.",
        budget_s=40, forbid_remedies=("zero_init_last_norm", "fixup"),
    ),
    Case(
        name="resnet_nonorm_32", family="resnet", model=NoNormResNet,
        batch=partial(image_batch, 10_000, size=32, batch=8),
        expect_init="exploding", expect_run="nonfinite",
        source="Zhang et al. 2019 (Fixup), §2: without normalization a ResNet's output "
               "variance explodes with depth; zoo training run: SGD (lr 0.01, momentum 0.9) "
               "from a loss of 5.6e3 to NaN at the second step",
        train=Train(steps=20, optimizer=sgd(0.01), outcome="diverges", baseline=CHANCE,
                    batch=partial(image_batch, size=32, batch=16),
                    model=partial(NoNormResNet, 32, 8)),
        why="He-init branches keep their input's variance, so each block doubles the stream's: "
            "activations grow from ~1 to ~1e5 over 32 blocks, the loss at init is ~1e4× chance "
            "and the gradient grows ~1e5× toward the input along the stream. The weights are "
            "He-initialised already, and the NaN comes from the first update, not the data.",
        budget_s=20, forbid_remedies=("he_init", "check_inputs"),
    ),
]
