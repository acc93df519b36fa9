"""More held-out conv nets, written after their papers (no torchvision).

- :class:`ResNeXt`: aggregated residual transformations (Xie et al. 2017, §4 and the CIFAR
  ResNeXt-29): bottleneck blocks whose 3×3 conv is grouped (cardinality C, width d per group),
  BatchNorm after every conv, He init, projection shortcuts where the shape changes;
- :class:`EfficientNet`: MBConv blocks (Tan & Le 2019; Sandler et al. 2018): 1×1 expansion,
  depthwise k×k, squeeze-and-excitation, linear 1×1 projection, BN after each conv, SiLU,
  and stochastic depth on the residual branches (Huang et al. 2016), rate growing linearly to
  0.2 with depth;
- :class:`AlexNetLRN`: an AlexNet-style net (Krizhevsky et al. 2012, §3.3-3.4 and §5): five
  convs with local response normalisation after the first two, overlapping max pooling,
  dropout in the classifier, weights N(0, 0.01), biases 1 in conv 2, 4, 5 and the hidden fully
  connected layers, 0 elsewhere (``init="paper"``), or He init (``init="he"``);
- :class:`FixupResNet`: the CIFAR ResNet without normalisation, initialised by Fixup (Zhang et
  al. 2019, §3): the classifier and each branch's last conv at 0, the other convs He-init
  scaled by L^(−1/(2m−2)) (m = 2 layers per branch), scalar biases before each conv and
  activation, a scalar multiplier per branch.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from ..cifar_resnets import _he_, _option_a


class ResNeXtBlock(nn.Module):
    """1×1 conv → BN → ReLU → grouped 3×3 conv (stride s) → BN → ReLU → 1×1 conv → BN, + the
    shortcut, ReLU (Xie et al. 2017, Fig. 3c)."""

    def __init__(self, c_in: int, c_out: int, stride: int, cardinality: int, width: int):
        super().__init__()
        inner = cardinality * width
        self.branch = nn.Sequential(
            nn.Conv2d(c_in, inner, 1, bias=False), nn.BatchNorm2d(inner), nn.ReLU(),
            nn.Conv2d(inner, inner, 3, stride, 1, groups=cardinality, bias=False),
            nn.BatchNorm2d(inner), nn.ReLU(),
            nn.Conv2d(inner, c_out, 1, bias=False), nn.BatchNorm2d(c_out))
        self.short = (nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False),
                                    nn.BatchNorm2d(c_out))
                      if stride != 1 or c_in != c_out else nn.Identity())
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.branch(x) + self.short(x))


class ResNeXt(nn.Module):
    """ResNeXt-(9n+2) for small images: a 3×3 stem of 32 channels, three stages of ``n``
    blocks with outputs (4w, 8w, 16w) and grouped widths (C·d, 2C·d, 4C·d), the first block
    of stages 2 and 3 strided, global average pooling, a linear classifier."""

    def __init__(self, n: int = 3, cardinality: int = 8, width: int = 4, w: int = 16,
                 classes: int = 10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 32, 3, 1, 1, bias=False), nn.BatchNorm2d(32),
                                  nn.ReLU())
        blocks, c = [], 32
        for stage in range(3):
            c_out = 4 * w * 2 ** stage
            for i in range(n):
                blocks.append(ResNeXtBlock(c, c_out, 2 if stage and i == 0 else 1,
                                           cardinality, width * 2 ** stage))
                c = c_out
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(c, classes)
        _he_(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.blocks(self.stem(x)).mean((2, 3)))


def drop_path(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Stochastic depth: zero the branch of a whole example with probability p, scale the
    kept ones by 1/(1 − p) (Huang et al. 2016; timm's ``drop_path``)."""
    if p == 0.0 or not training:
        return x
    keep = torch.rand((x.shape[0],) + (1,) * (x.dim() - 1), dtype=x.dtype,
                      device=x.device) >= p
    return x * keep / (1 - p)


class SqueezeExcite(nn.Module):
    """x · σ(W2 silu(W1 avgpool(x))), the squeeze width a quarter of the block's input."""

    def __init__(self, c: int, squeeze: int):
        super().__init__()
        self.reduce = nn.Conv2d(c, squeeze, 1)
        self.act = nn.SiLU()
        self.expand = nn.Conv2d(squeeze, c, 1)
        self.gate = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(self.expand(self.act(self.reduce(x.mean((2, 3), keepdim=True)))))


class MBConv(nn.Module):
    """The EfficientNet block: expand (1×1, ×e) → depthwise k×k (stride s) → SE → project
    (1×1, no activation); BN after each conv, SiLU; residual with stochastic depth when the
    shape is kept."""

    def __init__(self, c_in: int, c_out: int, expand: int, k: int, stride: int, p: float):
        super().__init__()
        mid = c_in * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers += [nn.Conv2d(c_in, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.SiLU()]
        layers += [nn.Conv2d(mid, mid, k, stride, k // 2, groups=mid, bias=False),
                   nn.BatchNorm2d(mid), nn.SiLU(), SqueezeExcite(mid, max(1, c_in // 4)),
                   nn.Conv2d(mid, c_out, 1, bias=False), nn.BatchNorm2d(c_out)]
        self.branch = nn.Sequential(*layers)
        self.residual = stride == 1 and c_in == c_out
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.branch(x)
        return x + drop_path(y, self.p, self.training) if self.residual else y


#: (expansion, channels, repeats, stride, kernel) of each stage: EfficientNet-B0's first five
#: stages (Tan & Le 2019, Table 1) at half width.
B0_STAGES = ((1, 8, 1, 1, 3), (6, 12, 2, 2, 3), (6, 20, 2, 2, 5), (6, 40, 3, 2, 3),
             (6, 56, 3, 1, 5))


class EfficientNet(nn.Module):
    """Stem (3×3, stride 1 on small images) → MBConv stages → 1×1 head conv → pooling →
    dropout → linear. Init as the reference: convs fan-out normal, the classifier U[±1/√n]."""

    def __init__(self, stages=B0_STAGES, stem: int = 16, head: int = 320,
                 drop_path_rate: float = 0.2, dropout: float = 0.2, classes: int = 10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, stem, 3, 1, 1, bias=False),
                                  nn.BatchNorm2d(stem), nn.SiLU())
        total = sum(r for _, _, r, _, _ in stages)
        blocks, c, i = [], stem, 0
        for e, c_out, r, s, k in stages:
            for j in range(r):
                blocks.append(MBConv(c, c_out, e, k, s if j == 0 else 1,
                                     drop_path_rate * i / total))
                c, i = c_out, i + 1
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Sequential(nn.Conv2d(c, head, 1, bias=False), nn.BatchNorm2d(head),
                                  nn.SiLU())
        self.drop = nn.Dropout(dropout)
        self.fc = nn.Linear(head, classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        bound = 1 / math.sqrt(head)
        nn.init.uniform_(self.fc.weight, -bound, bound)
        nn.init.zeros_(self.fc.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.drop(self.head(self.blocks(self.stem(x))).mean((2, 3))))


class AlexNetLRN(nn.Module):
    """Five convs (ReLU; LRN with k = 2, n = 5, α = 1e-4, β = 0.75 after the first two;
    3×3 max pooling with stride 2 after convs 1, 2 and 5), then dropout-FC-ReLU ×2 and a
    linear classifier, widths divided by ``scale`` for 32×32 images (first conv 5×5)."""

    def __init__(self, scale: int = 4, classes: int = 10, init: str = "paper"):
        super().__init__()
        c = [96 // scale, 256 // scale, 384 // scale, 384 // scale, 256 // scale]
        hidden = 4096 // (4 * scale)

        def lrn():
            return nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=2.0)

        self.features = nn.Sequential(
            nn.Conv2d(3, c[0], 5, 1, 2), nn.ReLU(), lrn(), nn.MaxPool2d(3, 2),
            nn.Conv2d(c[0], c[1], 5, 1, 2), nn.ReLU(), lrn(), nn.MaxPool2d(3, 2),
            nn.Conv2d(c[1], c[2], 3, 1, 1), nn.ReLU(),
            nn.Conv2d(c[2], c[3], 3, 1, 1), nn.ReLU(),
            nn.Conv2d(c[3], c[4], 3, 1, 1), nn.ReLU(), nn.MaxPool2d(3, 2))
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Dropout(0.5), nn.Linear(c[4] * 9, hidden), nn.ReLU(),
            nn.Dropout(0.5), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, classes))
        convs = [m for m in self.features if isinstance(m, nn.Conv2d)]
        fcs = [m for m in self.classifier if isinstance(m, nn.Linear)]
        ones = {id(convs[1]), id(convs[3]), id(convs[4]), id(fcs[0]), id(fcs[1])}
        for m in convs + fcs:
            if init == "paper":
                nn.init.normal_(m.weight, std=0.01)
                nn.init.constant_(m.bias, 1.0 if id(m) in ones else 0.0)
            else:  # "he": N(0, 2/fan_in), biases 0 (He et al. 2015)
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class FixupBlock(nn.Module):
    """relu(x + shortcut) with branch: +b1a → conv → +b1b → relu → +b2a → conv → ×scale →
    +b2b (Zhang et al. 2019, Fig. 1 right); option A shortcut (subsample, zero channels)."""

    def __init__(self, c_in: int, c_out: int, stride: int, blocks_total: int):
        super().__init__()
        self.c_out, self.stride = c_out, stride
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bias1a, self.bias1b, self.bias2a, self.bias2b = (
            nn.Parameter(torch.zeros(1)) for _ in range(4))
        self.scale = nn.Parameter(torch.ones(1))
        self.relu1, self.relu2 = nn.ReLU(), nn.ReLU()
        nn.init.normal_(self.conv1.weight, std=math.sqrt(2 / (c_out * 9))
                        * blocks_total ** -0.5)
        nn.init.zeros_(self.conv2.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu1(self.conv1(x + self.bias1a) + self.bias1b)
        y = self.conv2(y + self.bias2a) * self.scale + self.bias2b
        return self.relu2(y + _option_a(x, self.c_out, self.stride))


class FixupResNet(nn.Module):
    """The CIFAR ResNet-(6n+2) frame (He et al. 2016, §4.2) with Fixup blocks and no norm:
    He-init stem, three stages of ``n`` blocks at widths (w, 2w, 4w), a zero classifier."""

    def __init__(self, n: int = 5, w: int = 16, classes: int = 10):
        super().__init__()
        self.stem = nn.Conv2d(3, w, 3, 1, 1, bias=False)
        nn.init.kaiming_normal_(self.stem.weight, mode="fan_out", nonlinearity="relu")
        self.relu = nn.ReLU()
        blocks, c = [], w
        for stage in range(3):
            for i in range(n):
                c_out = w * 2 ** stage
                blocks.append(FixupBlock(c, c_out, 2 if stage and i == 0 else 1, 3 * n))
                c = c_out
        self.blocks = nn.Sequential(*blocks)
        self.bias2 = nn.Parameter(torch.zeros(1))
        self.fc = nn.Linear(c, classes)
        nn.init.zeros_(self.fc.weight)
        nn.init.zeros_(self.fc.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.blocks(self.relu(self.stem(x)))
        return self.fc(F.adaptive_avg_pool2d(h, 1).flatten(1) + self.bias2)
