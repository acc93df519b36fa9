"""Small real models for the verdicts that must hold by design (see test_by_design.py).

Each is the architecture a practitioner uses, shrunk so that a check runs in a second:
a ConvNeXt (Liu et al. 2022: depthwise 7×7, LayerNorm, GELU, layer scale 1e-6), a ResNet
without normalization (He init), a plain chain of BN-ReLU convolutions (Yang et al. 2019),
stacked GRU/LSTM read at the last of many steps, a diagonal linear state-space layer
written as a plain loop or as a scan, and a DenseNet block (Huang et al. 2017).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn


class LayerNorm2d(nn.Module):
    """LayerNorm over the channels of (N, C, H, W)."""

    def __init__(self, c: int):
        super().__init__()
        self.ln = nn.LayerNorm(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, C, H, W) -> (N, C, H, W)
        return self.ln(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class ConvNeXtBlock(nn.Module):
    """x + γ ⊙ pw2(GELU(pw1(LN(dw7×7(x))))), γ a per-channel layer scale (Touvron et al. 2021)."""

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
    """Patchify stem, stages of ConvNeXt blocks with LN + 2×2/2 conv downsampling, LN head."""

    def __init__(self, dims=(16, 32), depths=(2, 2), layer_scale=1e-6, classes=10, stem=2):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(3, dims[0], stem, stem), LayerNorm2d(dims[0])]
        for i, (d, n) in enumerate(zip(dims, depths, strict=True)):
            if i:
                layers += [LayerNorm2d(dims[i - 1]), nn.Conv2d(dims[i - 1], d, 2, 2)]
            layers += [ConvNeXtBlock(d, layer_scale) for _ in range(n)]
        self.features = nn.Sequential(*layers)
        self.norm = nn.LayerNorm(dims[-1])
        self.head = nn.Linear(dims[-1], classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d | nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, 3, H, W) -> (N, classes)
        return self.head(self.norm(self.features(x).mean((2, 3))))


class NoNormBlock(nn.Module):
    """relu(x + conv2(relu(conv1(x)))): a basic block without batch norm."""

    def __init__(self, c: int):
        super().__init__()
        self.c1 = nn.Conv2d(c, c, 3, padding=1)
        self.c2 = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x + self.c2(F.relu(self.c1(x))))


class NoNormResNet(nn.Module):
    """A ResNet without normalization, He init: each block adds its variance to the stream."""

    def __init__(self, blocks: int = 32, c: int = 8, classes: int = 10):
        super().__init__()
        self.stem = nn.Conv2d(3, c, 3, padding=1)
        self.blocks = nn.Sequential(*[NoNormBlock(c) for _ in range(blocks)])
        self.fc = nn.Linear(c, classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d | nn.Linear):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, 3, H, W) -> (N, classes)
        return self.fc(self.blocks(F.relu(self.stem(x))).mean((2, 3)))


def plain_bn(depth: int = 50, c: int = 8, classes: int = 10) -> nn.Sequential:
    """``depth`` 3×3 conv-BN-ReLU layers without shortcuts (He init), pooled linear head."""
    layers: list[nn.Module] = []
    c_in = 3
    for _ in range(depth):
        layers += [nn.Conv2d(c_in, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU()]
        c_in = c
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, classes)]
    model = nn.Sequential(*layers)
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
    return model


class StackedRNN(nn.Module):
    """A stacked nn.GRU/LSTM over (N, T, 2) read at the last step (the adding problem)."""

    def __init__(self, kind: str = "GRU", layers: int = 4, hidden: int = 16,
                 forget_bias: float | None = None):
        super().__init__()
        self.rnn = getattr(nn, kind)(2, hidden, num_layers=layers, batch_first=True)
        self.out = nn.Linear(hidden, 1)
        if forget_bias is not None:  # b_ih + b_hh of the forget gate (gates i, f, g, o)
            with torch.no_grad():
                for name, b in self.rnn.named_parameters():
                    if name.startswith("bias_ih"):
                        b[hidden : 2 * hidden] = forget_bias
                    elif name.startswith("bias_hh"):
                        b[hidden : 2 * hidden] = 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, T, 2) -> (N, 1)
        h, _ = self.rnn(x)
        return self.out(h[:, -1])


class DiagonalSSM(nn.Module):
    """h_t = λ ⊙ h_(t-1) + B x_t, read by C at the last step; λ ∈ [lo, hi] (a plain module).

    ``scan=True`` computes h_T = Σ_t λ^(T-1-t) ⊙ B x_t in one go instead of a Python loop.
    """

    def __init__(self, d_in: int = 2, d: int = 16, lo: float = 0.3, hi: float = 0.7,
                 scan: bool = False):
        super().__init__()
        self.B = nn.Linear(d_in, d, bias=False)
        self.C = nn.Linear(d, 1)
        self.log_lam = nn.Parameter(torch.log(torch.empty(d).uniform_(lo, hi)))
        self.scan = scan

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, T, d_in) -> (N, 1)
        u = self.B(x)
        lam = self.log_lam.exp()
        if self.scan:
            t = torch.arange(u.shape[1], dtype=u.dtype)
            h = (u * lam[None, :] ** (u.shape[1] - 1 - t)[:, None]).sum(1)
        else:
            h = torch.zeros(u.shape[0], u.shape[2])
            for t in range(u.shape[1]):
                h = lam * h + u[:, t]
        return self.C(h)


class DenseBlockNet(nn.Module):
    """Sigmoid conv layers whose inputs are the concatenation of every earlier output."""

    def __init__(self, layers: int = 12, growth: int = 4, classes: int = 10):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.convs = nn.ModuleList(
            nn.Conv2d(8 + i * growth, growth, 3, padding=1) for i in range(layers)
        )
        self.fc = nn.Linear(8 + layers * growth, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, 3, H, W) -> (N, classes)
        feats = [self.stem(x)]
        for conv in self.convs:
            feats.append(torch.sigmoid(conv(torch.cat(feats, 1))))
        return self.fc(torch.cat(feats, 1).mean((2, 3)))
