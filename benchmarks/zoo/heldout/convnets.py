"""Modern conv nets, written after their papers: ConvNeXt, MobileNetV2, DenseNet-BC, U-Net and a
ResNet generator with instance norm.

Each keeps the paper's block and init; sizes are cut so that a training run takes seconds on one
CPU thread (the case says which).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn


# ----------------------------------------------------------------------------- ConvNeXt
class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of an (N, C, H, W) tensor ("channels_first" in ConvNeXt)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class ConvNeXtBlock(nn.Module):
    """x + γ · Linear(GELU(Linear(LN(dwconv7×7(x))))) (Liu et al. 2022, Fig. 4).

    γ is the per-channel layer scale (Touvron et al. 2021), initialised to ``ls`` (1e-6 in
    ConvNeXt). The pointwise convs are Linear layers on the channels-last tensor, as in the
    reference code.
    """

    def __init__(self, dim: int, ls: float):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(ls * torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, C, H, W) -> same
        y = self.dwconv(x).permute(0, 2, 3, 1)  # (N, H, W, C)
        y = self.pwconv2(self.act(self.pwconv1(self.norm(y))))
        return x + (self.gamma * y).permute(0, 3, 1, 2)


class ConvNeXt(nn.Module):
    """Patchify stem (4×4/4 conv + LN), stages of blocks, LN + 2×2/2 conv between stages,
    global average pooling, LN, linear head. Init: weights trunc-normal(0.02), biases 0.
    """

    def __init__(self, dims=(24, 48, 96, 192), depths=(2, 2, 4, 2), ls: float = 1e-6,
                 classes: int = 10):
        super().__init__()
        self.down = nn.ModuleList([nn.Sequential(nn.Conv2d(3, dims[0], 4, 4),
                                                 LayerNorm2d(dims[0], eps=1e-6))])
        for a, b in zip(dims[:-1], dims[1:], strict=True):
            self.down.append(nn.Sequential(LayerNorm2d(a, eps=1e-6), nn.Conv2d(a, b, 2, 2)))
        self.stages = nn.ModuleList(
            nn.Sequential(*[ConvNeXtBlock(d, ls) for _ in range(n)])
            for d, n in zip(dims, depths, strict=True))
        self.norm = nn.LayerNorm(dims[-1], eps=1e-6)
        self.head = nn.Linear(dims[-1], classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d | nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, 3, H, W) -> (N, classes)
        for down, stage in zip(self.down, self.stages, strict=True):
            x = stage(down(x))
        return self.head(self.norm(x.mean((2, 3))))


# -------------------------------------------------------------------------- MobileNetV2
class InvertedResidual(nn.Module):
    """1×1 expand (×t) BN ReLU6, 3×3 depthwise BN ReLU6, 1×1 linear project BN (+ x when the
    shape is kept): Sandler et al. 2018, Table 1 and Fig. 4."""

    def __init__(self, c_in: int, c_out: int, stride: int, t: int):
        super().__init__()
        hid = c_in * t
        layers: list[nn.Module] = []
        if t != 1:
            layers += [nn.Conv2d(c_in, hid, 1, bias=False), nn.BatchNorm2d(hid), nn.ReLU6()]
        layers += [nn.Conv2d(hid, hid, 3, stride, 1, groups=hid, bias=False),
                   nn.BatchNorm2d(hid), nn.ReLU6(),
                   nn.Conv2d(hid, c_out, 1, bias=False), nn.BatchNorm2d(c_out)]
        self.conv = nn.Sequential(*layers)
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.residual else self.conv(x)


#: (t, c, n, s) of Sandler et al. 2018, Table 2; the first stride-2 rows are stride 1 here
#: (32×32 inputs, as CIFAR versions do).
MOBILENET_V2 = ((1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                (6, 160, 3, 2), (6, 320, 1, 1))


class MobileNetV2(nn.Module):
    """3×3 stem, 17 inverted residual blocks, 1×1 conv, pooling, dropout 0.2, linear.

    ``alpha`` is the width multiplier; the last conv has ``last`` channels. Init as the
    reference implementation: convs Kaiming normal (fan_out), BN 1/0, linear N(0, 0.01).
    """

    def __init__(self, alpha: float = 0.5, last: int = 320, classes: int = 10):
        super().__init__()
        c_in = int(32 * alpha)
        layers: list[nn.Module] = [nn.Conv2d(3, c_in, 3, 1, 1, bias=False),
                                   nn.BatchNorm2d(c_in), nn.ReLU6()]
        self.stem = nn.Sequential(*layers)
        blocks = []
        for t, c, n, s in MOBILENET_V2:
            c_out = max(8, int(c * alpha))
            for i in range(n):
                blocks.append(InvertedResidual(c_in, c_out, s if i == 0 else 1, t))
                c_in = c_out
        self.blocks = nn.Sequential(*blocks)
        self.last = nn.Sequential(nn.Conv2d(c_in, last, 1, bias=False), nn.BatchNorm2d(last),
                                  nn.ReLU6())
        self.drop = nn.Dropout(0.2)
        self.fc = nn.Linear(last, classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.last(self.blocks(self.stem(x)))
        return self.fc(self.drop(h.mean((2, 3))))


# ------------------------------------------------------------------------- DenseNet-BC
class DenseLayer(nn.Module):
    """cat(x, conv3×3(relu(bn(conv1×1(relu(bn(x))))))): Huang et al. 2017, §3 (DenseNet-B)."""

    def __init__(self, c_in: int, k: int):
        super().__init__()
        self.bn1, self.relu1 = nn.BatchNorm2d(c_in), nn.ReLU()
        self.conv1 = nn.Conv2d(c_in, 4 * k, 1, bias=False)
        self.bn2, self.relu2 = nn.BatchNorm2d(4 * k), nn.ReLU()
        self.conv2 = nn.Conv2d(4 * k, k, 3, 1, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, C, H, W) -> (N, C + k, H, W)
        y = self.conv2(self.relu2(self.bn2(self.conv1(self.relu1(self.bn1(x))))))
        return torch.cat([x, y], 1)


class DenseNet(nn.Module):
    """DenseNet-BC-``depth`` with growth ``k`` (Huang et al. 2017, §4: three dense blocks of
    (depth − 4)/6 bottleneck layers, transitions BN-ReLU-conv1×1 (compression 0.5) + 2×2 avg
    pool, a 3×3 stem of 2k channels, final BN-ReLU, pooling, linear)."""

    def __init__(self, depth: int = 40, k: int = 12, classes: int = 10):
        super().__init__()
        n = (depth - 4) // 6
        c = 2 * k
        self.stem = nn.Conv2d(3, c, 3, 1, 1, bias=False)
        feats: list[nn.Module] = []
        for b in range(3):
            for _ in range(n):
                feats.append(DenseLayer(c, k))
                c += k
            if b < 2:
                c_out = c // 2
                feats.append(nn.Sequential(nn.BatchNorm2d(c), nn.ReLU(),
                                           nn.Conv2d(c, c_out, 1, bias=False), nn.AvgPool2d(2)))
                c = c_out
        self.features = nn.Sequential(*feats)
        self.final = nn.Sequential(nn.BatchNorm2d(c), nn.ReLU())
        self.fc = nn.Linear(c, classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.final(self.features(self.stem(x))).mean((2, 3)))


# ------------------------------------------------------------------------------ U-Net
def _double_conv(c_in: int, c: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(c, c, 3, padding=1), nn.ReLU())


class UNet(nn.Module):
    """Ronneberger et al. 2015: a contracting path of double 3×3 convs and 2×2 max-pools, an
    expanding path of 2×2 up-convs, concatenation with the contracting path's features and
    double convs, a 1×1 conv out. No normalization and He init (§3.1: std √(2/N)), as the
    paper; padded convs so that the output has the input's size.
    """

    def __init__(self, c_in: int = 1, width: int = 16, levels: int = 3):
        super().__init__()
        widths = [width * 2**i for i in range(levels + 1)]
        self.down = nn.ModuleList()
        c = c_in
        for w in widths[:-1]:
            self.down.append(_double_conv(c, w))
            c = w
        self.bottom = _double_conv(widths[-2], widths[-1])
        self.up = nn.ModuleList()
        self.dec = nn.ModuleList()
        for w in reversed(widths[:-1]):
            self.up.append(nn.ConvTranspose2d(2 * w, w, 2, 2))
            self.dec.append(_double_conv(2 * w, w))
        self.out = nn.Conv2d(width, c_in, 1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d | nn.ConvTranspose2d):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, C, H, W) -> same
        skips = []
        for block in self.down:
            x = block(x)
            skips.append(x)
            x = F.max_pool2d(x, 2)
        x = self.bottom(x)
        for up, dec, skip in zip(self.up, self.dec, reversed(skips), strict=True):
            x = dec(torch.cat([skip, up(x)], 1))
        return self.out(x)


# --------------------------------------------------- ResNet generator with instance norm
class INResBlock(nn.Module):
    """x + IN(conv(relu(IN(conv(x))))), reflection padding (Johnson et al. 2016; CycleGAN)."""

    def __init__(self, c: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.ReflectionPad2d(1), nn.Conv2d(c, c, 3), nn.InstanceNorm2d(c, affine=True),
            nn.ReLU(), nn.ReflectionPad2d(1), nn.Conv2d(c, c, 3),
            nn.InstanceNorm2d(c, affine=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class ResnetGenerator(nn.Module):
    """Johnson et al. 2016 / Zhu et al. 2017 (CycleGAN) generator: c7s1-w, d2w, d4w,
    ``blocks`` residual blocks, u2w, uw, c7s1-c_in; instance norm (Ulyanov et al. 2016) with
    affine parameters; every conv weight N(0, 0.02), as CycleGAN's ``init_type='normal'``.
    The output is linear (the targets are standardised images, not in [−1, 1]).
    """

    def __init__(self, c_in: int = 1, width: int = 16, blocks: int = 4):
        super().__init__()

        def conv_in_relu(a, b, **kw):
            return [nn.Conv2d(a, b, **kw), nn.InstanceNorm2d(b, affine=True), nn.ReLU()]

        w = width
        self.encode = nn.Sequential(
            nn.ReflectionPad2d(3), *conv_in_relu(c_in, w, kernel_size=7),
            *conv_in_relu(w, 2 * w, kernel_size=3, stride=2, padding=1),
            *conv_in_relu(2 * w, 4 * w, kernel_size=3, stride=2, padding=1))
        self.blocks = nn.Sequential(*[INResBlock(4 * w) for _ in range(blocks)])
        self.decode = nn.Sequential(
            nn.ConvTranspose2d(4 * w, 2 * w, 3, 2, 1, output_padding=1),
            nn.InstanceNorm2d(2 * w, affine=True), nn.ReLU(),
            nn.ConvTranspose2d(2 * w, w, 3, 2, 1, output_padding=1),
            nn.InstanceNorm2d(w, affine=True), nn.ReLU(),
            nn.ReflectionPad2d(3), nn.Conv2d(w, c_in, 7))
        for m in self.modules():
            if isinstance(m, nn.Conv2d | nn.ConvTranspose2d):
                nn.init.normal_(m.weight, 0.0, 0.02)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.InstanceNorm2d):
                nn.init.normal_(m.weight, 1.0, 0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, C, H, W) -> same
        return self.decode(self.blocks(self.encode(x)))
