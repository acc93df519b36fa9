"""The third batch of held-out nets: a Conformer, a Swin transformer, IndRNN, SqueezeNet and
BN-Inception.

- :class:`Conformer`: Conformer blocks (Gulati et al. 2020, Fig. 1-4): a macaron pair of
  half-step feed-forward modules (LayerNorm → Linear ×4 → Swish → Linear, each added at ½)
  around multi-head self-attention and a convolution module (LayerNorm → pointwise conv to
  2d → GLU → depthwise conv → BatchNorm → Swish → pointwise conv), each module pre-LN with a
  residual, a LayerNorm closing every block; over a sequence of frames (learned absolute
  positions instead of the paper's relative ones), mean-pooled into a linear classifier;
- :class:`Swin`: a Swin transformer (Liu et al. 2021): patch partition and linear embedding,
  stages of pairs of blocks with window attention and shifted-window attention (a cyclic
  shift, an attention mask between regions, a learned relative position bias), patch merging
  between stages, pre-LN GELU MLPs, trunc-normal(0.02) init, mean pooling;
- :class:`IndRNN`: independently recurrent layers (Li et al. 2018): h_t = relu(W x_t +
  u ⊙ h_{t−1} + b), one recurrent weight per unit, constrained to |u| ≤ 2^{1/T} in the
  forward pass, BatchNorm after each layer (as in the paper's deep IndRNNs on sequential
  MNIST) or none; ``init="paper"`` draws u in [0, 2^{1/T}] and the last layer's in
  [2^{−1/T}, 2^{1/T}] (so that it keeps half its state over T steps), ``init="default"``
  draws u as ``nn.RNN`` draws its recurrent weights, U[−1/√h, 1/√h];
- :func:`squeezenet`: SqueezeNet v1.1 (Iandola et al. 2016) at reduced width: a strided
  3×3 conv, eight Fire modules (1×1 squeeze, then 1×1 and 3×3 expands concatenated, ReLU),
  max pooling after the stem and after Fire 2 and 4, dropout and a 1×1 conv classifier
  with global average pooling; PyTorch's default init everywhere (nothing re-initialised);
- :class:`InceptionBN`: Inception modules (Szegedy et al. 2015) with BatchNorm after every
  conv and the 5×5 branch as two 3×3 convs (Ioffe & Szegedy 2015), He-init convs.
"""

from __future__ import annotations

import math

import torch
from torch import nn


# --------------------------------------------------------------------------------- Conformer
class FeedForward(nn.Module):
    """LayerNorm → Linear(d, 4d) → Swish → Linear(4d, d) (the Conformer's FFN module)."""

    def __init__(self, d: int, mult: int = 4):
        super().__init__()
        self.net = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, mult * d), nn.SiLU(),
                                 nn.Linear(mult * d, d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class ConvModule(nn.Module):
    """LayerNorm → pointwise conv (2d) → GLU → depthwise conv → BatchNorm → Swish → pointwise
    conv, over (N, T, d)."""

    def __init__(self, d: int, kernel: int):
        super().__init__()
        self.norm = nn.LayerNorm(d)
        self.pw1 = nn.Conv1d(d, 2 * d, 1)
        self.glu = nn.GLU(dim=1)
        self.dw = nn.Conv1d(d, d, kernel, padding=kernel // 2, groups=d)
        self.bn = nn.BatchNorm1d(d)
        self.act = nn.SiLU()
        self.pw2 = nn.Conv1d(d, d, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.glu(self.pw1(self.norm(x).transpose(1, 2)))
        return self.pw2(self.act(self.bn(self.dw(y)))).transpose(1, 2)


class ConformerBlock(nn.Module):
    """x + ½FFN → + MHSA → + Conv → + ½FFN → LayerNorm (Gulati et al. 2020, eq. 1)."""

    def __init__(self, d: int, heads: int, kernel: int):
        super().__init__()
        self.ff1 = FeedForward(d)
        self.attn_norm = nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, heads, batch_first=True)
        self.conv = ConvModule(d, kernel)
        self.ff2 = FeedForward(d)
        self.norm = nn.LayerNorm(d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + 0.5 * self.ff1(x)
        h = self.attn_norm(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        x = x + self.conv(x)
        x = x + 0.5 * self.ff2(x)
        return self.norm(x)


class Conformer(nn.Module):
    """Frames (N, T, f) → linear input projection and learned positions → ``layers``
    Conformer blocks → mean over time → linear classifier."""

    def __init__(self, frames: int = 16, features: int = 16, d: int = 64, layers: int = 4,
                 heads: int = 4, kernel: int = 7, classes: int = 10):
        super().__init__()
        self.inp = nn.Linear(features, d)
        self.pos = nn.Parameter(torch.zeros(1, frames, d))
        nn.init.trunc_normal_(self.pos, std=0.02)
        self.blocks = nn.Sequential(*[ConformerBlock(d, heads, kernel) for _ in range(layers)])
        self.head = nn.Linear(d, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, T, f) -> (N, classes)
        return self.head(self.blocks(self.inp(x) + self.pos).mean(1))


# -------------------------------------------------------------------------------------- Swin
def _windows(x: torch.Tensor, w: int) -> torch.Tensor:
    """(N, H, W, C) -> (N·H/w·W/w, w², C)."""
    n, h, wd, c = x.shape
    x = x.view(n, h // w, w, wd // w, w, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, w * w, c)


def _unwindow(x: torch.Tensor, w: int, n: int, h: int, wd: int) -> torch.Tensor:
    """The inverse of :func:`_windows`."""
    c = x.shape[-1]
    x = x.view(n, h // w, wd // w, w, w, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(n, h, wd, c)


class WindowAttention(nn.Module):
    """Multi-head self-attention inside w×w windows with a learned relative position bias
    (Liu et al. 2021, §3.2, eq. 4)."""

    def __init__(self, d: int, heads: int, w: int):
        super().__init__()
        self.heads, self.w = heads, w
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.bias_table = nn.Parameter(torch.zeros((2 * w - 1) ** 2, heads))
        nn.init.trunc_normal_(self.bias_table, std=0.02)
        coords = torch.stack(torch.meshgrid(torch.arange(w), torch.arange(w),
                                            indexing="ij")).flatten(1)  # (2, w²)
        rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (w - 1)
        self.register_buffer("rel_index", rel[..., 0] * (2 * w - 1) + rel[..., 1],
                             persistent=False)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        attn = (q @ k.transpose(-2, -1)) / math.sqrt(c // self.heads)
        attn = attn + self.bias_table[self.rel_index].permute(2, 0, 1)[None]
        if mask is not None:  # (windows, t, t), 0 or −100
            nw = mask.shape[0]
            attn = attn.view(b // nw, nw, self.heads, t, t) + mask[None, :, None]
            attn = attn.view(b, self.heads, t, t)
        out = attn.softmax(-1) @ v
        return self.proj(out.transpose(1, 2).reshape(b, t, c))


class SwinBlock(nn.Module):
    """x + W-MSA(LN(x)) (windows cyclically shifted by ``shift``), then x + MLP(LN(x))."""

    def __init__(self, d: int, heads: int, res: int, w: int, shift: int):
        super().__init__()
        self.res, self.w = res, min(w, res)
        self.shift = shift if res > w else 0
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = WindowAttention(d, heads, self.w)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))
        self.register_buffer("mask", self._mask() if self.shift else None, persistent=False)

    def _mask(self) -> torch.Tensor:
        """−100 between tokens of a shifted window that come from different regions."""
        img = torch.zeros(1, self.res, self.res, 1)
        cuts = (slice(0, -self.w), slice(-self.w, -self.shift), slice(-self.shift, None))
        region = 0
        for hs in cuts:
            for ws in cuts:
                img[:, hs, ws] = region
                region += 1
        win = _windows(img, self.w).squeeze(-1)  # (windows, w²)
        diff = win[:, None, :] - win[:, :, None]
        return torch.zeros_like(diff).masked_fill(diff != 0, -100.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, res², d)
        n, _, c = x.shape
        h = self.norm1(x).view(n, self.res, self.res, c)
        if self.shift:
            h = torch.roll(h, (-self.shift, -self.shift), (1, 2))
        h = _unwindow(self.attn(_windows(h, self.w), self.mask), self.w, n, self.res, self.res)
        if self.shift:
            h = torch.roll(h, (self.shift, self.shift), (1, 2))
        x = x + h.reshape(n, -1, c)
        return x + self.mlp(self.norm2(x))


class PatchMerging(nn.Module):
    """Each 2×2 group of tokens concatenated (4d), LayerNorm, linear to 2d (§3.1)."""

    def __init__(self, d: int, res: int):
        super().__init__()
        self.res = res
        self.norm = nn.LayerNorm(4 * d)
        self.red = nn.Linear(4 * d, 2 * d, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, c = x.shape
        x = x.view(n, self.res, self.res, c)
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]],
                      -1)
        return self.red(self.norm(x.reshape(n, -1, 4 * c)))


class Swin(nn.Module):
    """Patch partition (p×p, linear embedding, LayerNorm), then per stage ``depths[i]``
    blocks alternating regular and shifted windows (patch merging before every stage but the
    first), a final LayerNorm, mean pooling and a linear head; ``blocks`` lists every block
    and merging layer in order (the residual stream)."""

    def __init__(self, size: int = 16, p: int = 2, d: int = 48, depths=(2, 2, 2),
                 heads=(3, 6, 12), w: int = 4, c_in: int = 3, classes: int = 10):
        super().__init__()
        self.embed = nn.Conv2d(c_in, d, p, p)
        self.embed_norm = nn.LayerNorm(d)
        res, layers = size // p, []
        for i, (depth, h) in enumerate(zip(depths, heads, strict=True)):
            if i:
                layers.append(PatchMerging(d, res))
                d, res = 2 * d, res // 2
            layers += [SwinBlock(d, h, res, w, 0 if j % 2 == 0 else w // 2)
                       for j in range(depth)]
        self.blocks = nn.Sequential(*layers)
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, classes)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, C, H, W) -> (N, classes)
        h = self.embed_norm(self.embed(x).flatten(2).transpose(1, 2))
        return self.head(self.norm(self.blocks(h)).mean(1))


# ------------------------------------------------------------------------------------ IndRNN
class IndRNNLayer(nn.Module):
    """h_t = relu(W x_t + u ⊙ h_{t−1} + b) over (N, T, f), u clamped to |u| ≤ ``u_max``;
    ``bn``: BatchNorm over the units (statistics over examples and steps) after the layer."""

    def __init__(self, n_in: int, hidden: int, u_low: float, u_high: float, u_max: float,
                 bn: bool = True):
        super().__init__()
        self.inp = nn.Linear(n_in, hidden)
        self.bn = nn.BatchNorm1d(hidden) if bn else None
        self.u = nn.Parameter(torch.empty(hidden).uniform_(u_low, u_high))
        self.u_max = u_max
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.inp(x)  # (N, T, h)
        u = self.u.clamp(-self.u_max, self.u_max)
        h = torch.zeros_like(z[:, 0])
        out = []
        for t in range(z.shape[1]):
            h = torch.relu(z[:, t] + u * h)
            out.append(h)
        h = self.act(torch.stack(out, 1))  # relu is idempotent: marks the layer's units
        return h if self.bn is None else self.bn(h.transpose(1, 2)).transpose(1, 2)


class IndRNN(nn.Module):
    """``layers`` IndRNN layers over a sequence (BatchNorm after each where ``bn``), read at
    the last step by a linear layer."""

    def __init__(self, steps: int = 256, hidden: int = 64, layers: int = 2, n_in: int = 1,
                 classes: int = 10, init: str = "paper", bn: bool = True):
        super().__init__()
        u_max = 2.0 ** (1.0 / steps)
        lim = 1.0 / math.sqrt(hidden)
        mods = []
        for i in range(layers):
            if init == "paper":
                low = 2.0 ** (-1.0 / steps) if i == layers - 1 else 0.0
                bounds = (low, u_max)
            elif init == "default":
                bounds = (-lim, lim)
            else:
                raise ValueError(f"init must be 'paper' or 'default', got {init!r}")
            mods.append(IndRNNLayer(n_in if i == 0 else hidden, hidden, *bounds, u_max, bn))
        self.layers = nn.Sequential(*mods)
        self.out = nn.Linear(hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, T, f) -> (N, classes)
        return self.out(self.layers(x)[:, -1])


# -------------------------------------------------------------------------------- SqueezeNet
class Fire(nn.Module):
    """squeeze 1×1 → relu → [expand 1×1 → relu, expand 3×3 → relu] concatenated."""

    def __init__(self, c_in: int, s: int, e: int):
        super().__init__()
        self.squeeze = nn.Sequential(nn.Conv2d(c_in, s, 1), nn.ReLU())
        self.e1 = nn.Sequential(nn.Conv2d(s, e, 1), nn.ReLU())
        self.e3 = nn.Sequential(nn.Conv2d(s, e, 3, padding=1), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.squeeze(x)
        return torch.cat([self.e1(s), self.e3(s)], 1)


def squeezenet(scale: int = 2, c_in: int = 3, classes: int = 10) -> nn.Sequential:
    """SqueezeNet v1.1 (Iandola et al. 2016, Table 1 and the v1.1 release): Fire widths
    (s, e) = (16, 64) ×2, (32, 128) ×2, (48, 192) ×2, (64, 256) ×2, divided by ``scale``."""

    def f(c_in_: int, s: int, e: int) -> Fire:
        return Fire(c_in_, s // scale, e // scale)

    e = [64 // scale, 128 // scale, 192 // scale, 256 // scale]
    return nn.Sequential(
        nn.Conv2d(c_in, 64 // scale, 3, 2), nn.ReLU(), nn.MaxPool2d(3, 2, ceil_mode=True),
        f(64 // scale, 16, 64), f(2 * e[0], 16, 64), nn.MaxPool2d(3, 2, ceil_mode=True),
        f(2 * e[0], 32, 128), f(2 * e[1], 32, 128), nn.MaxPool2d(3, 2, ceil_mode=True),
        f(2 * e[1], 48, 192), f(2 * e[2], 48, 192), f(2 * e[2], 64, 256),
        f(2 * e[3], 64, 256),
        nn.Dropout(0.5), nn.Conv2d(2 * e[3], classes, 1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten())


# ------------------------------------------------------------------------------- BN-Inception
def _cbr(c_in: int, c: int, k: int, stride: int = 1) -> nn.Sequential:
    """conv (no bias) → BatchNorm → ReLU."""
    return nn.Sequential(nn.Conv2d(c_in, c, k, stride, k // 2, bias=False), nn.BatchNorm2d(c),
                         nn.ReLU())


class Inception(nn.Module):
    """An Inception module with BN (Ioffe & Szegedy 2015, Fig. 5 of Szegedy et al. 2016):
    1×1; 1×1 → 3×3; 1×1 → 3×3 → 3×3 (the 5×5 factorised); 3×3 average pool → 1×1;
    concatenated."""

    def __init__(self, c_in: int, c1: int, r3: int, c3: int, rd: int, cd: int, cp: int):
        super().__init__()
        self.b1 = _cbr(c_in, c1, 1)
        self.b3 = nn.Sequential(_cbr(c_in, r3, 1), _cbr(r3, c3, 3))
        self.bd = nn.Sequential(_cbr(c_in, rd, 1), _cbr(rd, cd, 3), _cbr(cd, cd, 3))
        self.bp = nn.Sequential(nn.AvgPool2d(3, 1, 1), _cbr(c_in, cp, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.b1(x), self.b3(x), self.bd(x), self.bp(x)], 1)


class InceptionBN(nn.Module):
    """A small BN-Inception: a 3×3 stem, then ``blocks`` (Inception modules, max pooling
    between the two groups), global average pooling and a linear classifier; convs He-init
    (fan-out), as the reference implementations do."""

    def __init__(self, w: int = 16, classes: int = 10):
        super().__init__()
        self.stem = _cbr(3, 2 * w, 3)
        c = 2 * w
        mods: list[nn.Module] = []
        for i, (c1, r3, c3, rd, cd, cp) in enumerate(
                [(w, w, 2 * w, w // 2, w, w), (w, w, 2 * w, w // 2, w, w),
                 (2 * w, w, 2 * w, w, 2 * w, w), (2 * w, w, 2 * w, w, 2 * w, w),
                 (2 * w, 2 * w, 3 * w, w, 2 * w, w)]):
            if i == 2:
                mods.append(nn.MaxPool2d(2))
            mods.append(Inception(c, c1, r3, c3, rd, cd, cp))
            c = c1 + c3 + cd + cp
        self.blocks = nn.Sequential(*mods)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c, classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, 3, H, W) -> (N, classes)
        return self.fc(self.pool(self.blocks(self.stem(x))).flatten(1))


# ---------------------------------------------------------------- attention without residuals
class NoSkipLayer(nn.Module):
    """A post-LN transformer layer with its two residual connections removed:
    h ← LN(MHSA(h)), h ← LN(MLP(h))."""

    def __init__(self, d: int, heads: int):
        super().__init__()
        self.attn = nn.MultiheadAttention(d, heads, batch_first=True)
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        h = self.norm1(self.attn(h, h, h, need_weights=False)[0])
        return self.norm2(self.mlp(h))


class NoSkipTransformer(nn.Module):
    """Frames (N, T, f) → linear projection and learned positions → ``layers`` transformer
    layers without residual connections (Dong et al. 2021's ablation) → mean over tokens →
    linear classifier."""

    def __init__(self, frames: int = 16, features: int = 16, d: int = 64, layers: int = 8,
                 heads: int = 4, classes: int = 10):
        super().__init__()
        self.inp = nn.Linear(features, d)
        self.pos = nn.Parameter(torch.zeros(1, frames, d))
        nn.init.trunc_normal_(self.pos, std=0.02)
        self.layers = nn.Sequential(*[NoSkipLayer(d, heads) for _ in range(layers)])
        self.head = nn.Linear(d, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, T, f) -> (N, classes)
        return self.head(self.layers(self.inp(x) + self.pos).mean(1))


# ------------------------------------------------------------------------------------ Maxout
class Maxout(nn.Module):
    """A maxout layer (Goodfellow et al. 2013): k affine pieces per unit, their maximum."""

    def __init__(self, n_in: int, units: int, k: int):
        super().__init__()
        self.units, self.k = units, k
        self.lin = nn.Linear(n_in, units * k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x).view(*x.shape[:-1], self.units, self.k).amax(-1)


def maxout_mlp(layers: int = 3, units: int = 128, k: int = 4, drop: float = 0.2,
               n_in: int = 64, classes: int = 10) -> nn.Sequential:
    """``layers`` maxout layers with dropout after each, then a linear classifier."""
    mods: list[nn.Module] = []
    for i in range(layers):
        mods += [Maxout(n_in if i == 0 else units, units, k), nn.Dropout(drop)]
    return nn.Sequential(*mods, nn.Linear(units, classes))
