"""Development cases that came from the held-out set: a rule changed because of each.

The held-out set is never tuned on: a held-out case whose miss led to a rule change moves
here, with the truth, source and figures recorded when it was written
(``benchmarks/zoo_heldout_truth.py``, measured without gradwatch), and a new held-out case
replaces it. These came with the rules they changed:

- ``tcn_seqdigits`` (a temporal convolutional network): a gradient small at the early steps
  of a sequence but present, with no per-step factor compounding, is not a vanishing
  gradient through time (``gradwatch.probes.compounded_decay``);
- ``highway_50``: a sigmoid whose output multiplies another signal is a gate, found in the
  autograd graph, not a saturating activation;
- ``llama_adamw_lr_0p1``: an update several times the weights' size swamps them although
  ``update_ratio``, taken over the weights after the step, stays just under 1;
- ``wavenet_seqdigits`` (dilated causal convolutions, no recurrence): a gradient through time
  that is uneven over the steps (1e-7 of the last step's at t = 0) but reaches most of them
  is judged by its reach, not by the first step's share, where the model has no recurrence
  (``gradwatch.verdicts.TEMPORAL_REACH``);
- ``vgg11_default_init`` (VGG-A without BN at PyTorch's default init): the per-layer factor
  of the back-propagated signal holds across the layers where the shape changes (a conv
  after a max pool), so it is compounded over every layer crossed as far as the end-to-end
  ratio confirms it (``gradwatch.diagnose._flow.crossed_decay``), not over the same-shape
  steps alone.
"""

from __future__ import annotations

import math
from functools import partial

import torch
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

from .case import Case, Train
from .data import digits_batch, image_batch, pixel_sequence_batch, progression_batch
from .mlp import CHANCE, probe
from .transformer import VOCAB, llama, token_loss

TOKEN_CHANCE = math.log(VOCAB)


def adamw(lr: float, wd: float = 0.05, betas=(0.9, 0.999)):
    """``model -> AdamW`` (Loshchilov & Hutter 2019)."""
    return lambda model: torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=wd,
                                           betas=betas)


# -------------------------------------------------------------------------------- TCN
class TemporalBlock(nn.Module):
    """Bai et al. 2018, Fig. 1b: two dilated causal convs with weight norm, ReLU and dropout,
    and a residual connection (a 1×1 conv where the width changes)."""

    def __init__(self, c_in: int, c: int, k: int, dilation: int, drop: float):
        super().__init__()
        pad = (k - 1) * dilation
        self.pad = nn.ConstantPad1d((pad, 0), 0.0)  # left padding only: causal
        self.conv1 = weight_norm(nn.Conv1d(c_in, c, k, dilation=dilation))
        self.relu1, self.drop1 = nn.ReLU(), nn.Dropout(drop)
        self.conv2 = weight_norm(nn.Conv1d(c, c, k, dilation=dilation))
        self.relu2, self.drop2 = nn.ReLU(), nn.Dropout(drop)
        self.down = nn.Conv1d(c_in, c, 1) if c_in != c else None
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, C, T) -> (N, c, T)
        y = self.drop1(self.relu1(self.conv1(self.pad(x))))
        y = self.drop2(self.relu2(self.conv2(self.pad(y))))
        return self.relu(y + (x if self.down is None else self.down(x)))


class TCN(nn.Module):
    """Temporal convolutional network (Bai et al. 2018): ``levels`` blocks with dilation 2^i,
    kernel ``k``; receptive field 1 + 2(k − 1)(2^levels − 1). Reads the last step."""

    def __init__(self, c_in: int = 2, c: int = 24, levels: int = 7, k: int = 4,
                 drop: float = 0.0, n_out: int = 1):
        super().__init__()
        self.blocks = nn.Sequential(*[TemporalBlock(c_in if i == 0 else c, c, k, 2**i, drop)
                                      for i in range(levels)])
        self.out = nn.Linear(c, n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, T, c_in) -> (N, n_out)
        return self.out(self.blocks(x.transpose(1, 2))[:, :, -1])


# ---------------------------------------------------------------------------- highway
class HighwayLayer(nn.Module):
    """y = H(x) · T(x) + x · (1 − T(x)), H = ReLU(W_H x + b_H), T = σ(W_T x + b_T)
    (Srivastava et al. 2015, eq. 3); b_T starts negative, so each layer starts near the
    identity (§2.2: "−1 to −3")."""

    def __init__(self, d: int, gate_bias: float):
        super().__init__()
        self.h, self.relu = nn.Linear(d, d), nn.ReLU()
        self.t, self.gate = nn.Linear(d, d), nn.Sigmoid()
        nn.init.kaiming_normal_(self.h.weight, nonlinearity="relu")
        nn.init.zeros_(self.h.bias)
        nn.init.constant_(self.t.bias, gate_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.gate(self.t(x))
        return self.relu(self.h(x)) * t + x * (1 - t)


class Highway(nn.Module):
    """Input projection (64 → d, ReLU), ``depth`` highway layers, a linear classifier."""

    def __init__(self, depth: int = 50, d: int = 64, gate_bias: float = -2.0):
        super().__init__()
        self.inp, self.act = nn.Linear(64, d), nn.ReLU()
        self.layers = nn.Sequential(*[HighwayLayer(d, gate_bias) for _ in range(depth)])
        self.out = nn.Linear(d, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.layers(self.act(self.inp(x))))


# ---------------------------------------------------------------------------- WaveNet
class WaveNetBlock(nn.Module):
    """Gated residual block (van den Oord et al. 2016, §2.3-2.4): z = tanh(W_f ∗ x) ⊙
    σ(W_g ∗ x) with a dilated causal conv (kernel 2), then x + 1×1(z) to the next block and
    1×1(z) to the skip sum. Returns (residual output, skip output)."""

    def __init__(self, c: int, skip: int, dilation: int):
        super().__init__()
        self.dilation = dilation
        self.filt = nn.Conv1d(c, c, 2, dilation=dilation)
        self.gate = nn.Conv1d(c, c, 2, dilation=dilation)
        self.tanh, self.sigmoid = nn.Tanh(), nn.Sigmoid()
        self.res = nn.Conv1d(c, c, 1)
        self.skip = nn.Conv1d(c, skip, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # (N, C, T)
        h = nn.functional.pad(x, (self.dilation, 0))  # causal: the past only
        z = self.tanh(self.filt(h)) * self.sigmoid(self.gate(h))
        return x + self.res(z), self.skip(z)


class WaveNet(nn.Module):
    """A causal 1×1 input conv, ``layers`` gated blocks with dilations 1, 2, 4, … (receptive
    field 2^layers), the skip sum → ReLU → 1×1 → ReLU → 1×1 to the classes, read at the last
    step. Input (N, T, 1), as the sequential digits give it; PyTorch's default init."""

    def __init__(self, c: int = 32, skip: int = 64, layers: int = 8, classes: int = 10):
        super().__init__()
        self.inp = nn.Conv1d(1, c, 1)
        self.blocks = nn.ModuleList(WaveNetBlock(c, skip, 2 ** i) for i in range(layers))
        self.post = nn.Sequential(nn.ReLU(), nn.Conv1d(skip, skip, 1), nn.ReLU(),
                                  nn.Conv1d(skip, classes, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x.transpose(1, 2))
        skips = 0
        for block in self.blocks:
            h, s = block(h)
            skips = skips + s
        return self.post(skips)[:, :, -1]


# ------------------------------------------------------------------------ VGG-A, default init
#: VGG configuration A (11 weight layers), widths divided by ``scale``; "M" is a 2×2 max pool.
VGG_A = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")


def vgg11_default(scale: int = 4, size: int = 32, classes: int = 10) -> nn.Sequential:
    """VGG-A (Simonyan & Zisserman 2015, Table 1: 8 convs, 3 fully connected layers with
    dropout), no BatchNorm, every layer at PyTorch's default init (``nn.Conv2d``/``nn.Linear``
    Kaiming-uniform with a = √5: n·Var[w] = 1/3; nothing re-initialised)."""
    layers: list[nn.Module] = []
    c = 3
    for v in VGG_A:
        if v == "M":
            layers.append(nn.MaxPool2d(2))
        else:
            layers += [nn.Conv2d(c, v // scale, 3, padding=1), nn.ReLU()]
            c = v // scale
    side = size // 32
    hidden = 4096 // (4 * scale)
    layers += [nn.Flatten(), nn.Linear(c * side * side, hidden), nn.ReLU(), nn.Dropout(0.5),
               nn.Linear(hidden, hidden), nn.ReLU(), nn.Dropout(0.5),
               nn.Linear(hidden, classes)]
    return nn.Sequential(*layers)


CASES = [
    Case(
        name="tcn_seqdigits", family="cnn", model=partial(TCN, 1, 24, 7, 4, 0.0, 10),
        batch=lambda: pixel_sequence_batch(10_000, batch=16),
        expect_init="healthy", expect_run="healthy",
        source="Bai et al. 2018, §5.2 (sequential MNIST: the TCN learns pixel-by-pixel digits "
               "quickly); receptive field 1 + 2·3·127 = 763 ≥ T = 256; weight norm as the "
               "paper",
        train=Train(steps=100, optimizer=adamw(2e-3, wd=0.0), batch=pixel_sequence_batch,
                    outcome="trains", baseline=CHANCE),
        why="7 temporal blocks (kernel 4, dilations 1-64, 24 channels): every pixel is in "
            "the receptive field. ‖∂L/∂x_t‖ lies between 1e-5 and 1e-3 of the last step's "
            "for every earlier t, with no decay along t (the last step has a direct path; "
            "first/last 1.9e-4); 12% of one layer's ReLU channels are off on the batch. "
            "AdamW (lr 2e-3) trains it: 2.26 → 0.53. No recurrence: a fit of ‖∂L/∂x_t‖ over "
            "the steps before the last decays 1/20 over the sequence, not the 1/5265 of the "
            "first step's share, and no recurrence remedy applies.",
        forbid_remedies=("slow_decay_init", "chrono_init", "lstm_or_gru", "forget_gate_bias"),
        measured={
            'init.loss_over_chance': 0.976,
            'init.trunk_ratio': 1.01,
            'init.trunk_factor': 1.0,
            'init.fwd_growth': 1.13,
            'init.time_ratio': 0.00019,
            'init.time_reach': 256.0,
            'init.gw_ratio_max': 0.575,
            'init.dead_max': 0.125,
            'init.saturated_max': 0.0,
            'train.loss_start': 2.26,
            'train.loss_end': 0.529,
            'train.move_first': 0.0984,
            'train.update_ratio_max': 0.0215,
            'after.trunk_ratio': 1.22,
            'after.time_ratio': 0.0105,
            'after.dead_max': 0.292,
            'after.saturated_max': 0.0,
        },
    ),
    Case(
        name="highway_50", family="mlp", model=partial(Highway, 50, 64, -3.0), batch=probe,
        expect_init="healthy", expect_run="healthy",
        source="Srivastava et al. 2015, §2.2, §3.1 and Fig. 1: highway nets of 50-100 layers "
               "with negative transform-gate biases train with SGD where plain nets of that "
               "depth do not",
        train=Train(steps=300,
                    optimizer=lambda m: torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9),
                    batch=digits_batch, outcome="trains", baseline=CHANCE, drop=0.3),
        why="50 highway layers of width 64 after a ReLU input layer, gate bias −3 (T ≈ "
            "0.05 at init): the carry path shrinks the signal and the gradient a little "
            "per layer (0.95), ‖∂L/∂h‖ at the first layer 0.098× the last's, the forward "
            "std ×0.14; a quarter of one transform layer's ReLU units are off on the batch. "
            "SGD (lr 0.05, momentum 0.9) trains it: 2.30 → 0.105. The transform gates' "
            "sigmoids sit near 0 (closed), as the paper sets them: gates, not saturation.",
        measured={
            'init.loss_over_chance': 1.0,
            'init.trunk_ratio': 0.0984,
            'init.trunk_factor': 0.954,
            'init.fwd_growth': 0.136,
            'init.gw_ratio_max': 0.043,
            'init.dead_max': 0.25,
            'init.saturated_max': 6.1e-05,
            'train.loss_start': 2.3,
            'train.loss_end': 0.105,
            'train.move_first': 1.59,
            'train.update_ratio_max': 0.00171,
            'after.trunk_ratio': 0.545,
            'after.dead_max': 0.109,
            'after.saturated_max': 0.207,
        },
    ),
    Case(
        name="llama_adamw_lr_0p1", family="transformer", model=partial(llama, 4, 64),
        loss=token_loss, batch=lambda: progression_batch(10_000, length=16, vocab=VOCAB, batch=8),
        expect_init="healthy", expect_run="exploding",
        source="zoo training run: a Llama (Touvron et al. 2023) with AdamW at lr 0.1 (100× the "
               "usual 1e-3): every step moves each weight by ~lr, far more than its size "
               "(N(0, 0.02)); the loss jumps above its start and the model learns nothing",
        train=Train(steps=100, optimizer=adamw(0.1, wd=0.1, betas=(0.9, 0.95)),
                    batch=partial(progression_batch, length=16, vocab=VOCAB, batch=16),
                    outcome="stalls", baseline=TOKEN_CHANCE, rise=3.0),
        why="4 layers, d 64, 4 query and 2 key-value heads, 16-token progressions. At lr 0.1 "
            "the first step moves the weights by 5× their norm (‖Δθ‖/‖θ‖ = 5; update_ratio, "
            "over the weights after the step, reads 0.99), the loss jumps above chance (the "
            "first 10 steps average 4.19 against ln 16 = 2.77) and ends at 2.55, near chance, "
            "where the same model at lr 1e-3 reaches 0.30; the embedding moved 23× its norm, "
            "and after the run ‖∂L/∂h‖ grows ×1.1e4 from the last layer down to the "
            "embedding. Updates that swamp the weights, with no NaN: exploding, not "
            "nonfinite.",
        measured={
            'init.loss_over_chance': 0.994,
            'init.trunk_ratio': 1.47,
            'init.trunk_factor': 1.1,
            'init.fwd_growth': 1.96,
            'init.time_ratio': 2.46,
            'init.time_reach': 16.0,
            'init.gw_ratio_max': 1.01,
            'init.dead_max': 0.0,
            'init.saturated_max': 0.0,
            'train.loss_start': 4.19,
            'train.loss_end': 2.55,
            'train.move_first': 22.8,
            'train.update_ratio_max': 5.0,
            'after.trunk_ratio': 11500.0,
            'after.time_ratio': 983.0,
            'after.dead_max': 0.0,
            'after.saturated_max': 0.0,
        },
    ),
    Case(
        name="wavenet_seqdigits", family="cnn", model=WaveNet,
        batch=lambda: pixel_sequence_batch(10_000, batch=16),
        expect_init="healthy", expect_run="healthy",
        source="van den Oord et al. 2016 (WaveNet: gated tanh·σ units, dilated causal convs, "
               "residual and skip connections); zoo training run",
        train=Train(steps=150, optimizer=adamw(2e-3, wd=0.0), batch=pixel_sequence_batch,
                    outcome="trains", baseline=CHANCE),
        why="8 gated blocks (32 channels, dilations 1-128: a receptive field of exactly "
            "the 256 pixels), skip sum read at the last step. ‖∂L/∂h‖ along the residual "
            "stream grows ×3.2 toward the input; ‖∂L/∂x_t‖ at the input is uneven over t "
            "(the number of dilated paths from x_t to the last output varies with t): "
            "7e-8 of the last step's at t = 0, but above 1e-4 of its maximum over 245 of "
            "the 256 steps, and every step is inside the receptive field. AdamW (lr "
            "2e-3) trains it: 2.31 → 0.39 in 150 steps; after training the gradient "
            "reaches all 256 steps (t = 0: 2.7e-4 of the last) and 19% of one gate's "
            "outputs sit in the sigmoid's tails (gates that have learnt to close). No "
            "recurrence: no recurrence remedy applies.",
        forbid_remedies=("slow_decay_init", "chrono_init", "lstm_or_gru", "forget_gate_bias"),
        measured={
            'init.loss_over_chance': 1.03,
            'init.trunk_ratio': 3.23,
            'init.trunk_factor': 1.18,
            'init.fwd_growth': 1.22,
            'init.time_ratio': 7.1e-08,
            'init.time_reach': 245.0,
            'init.gw_ratio_max': 0.251,
            'init.dead_max': 0.109,
            'init.saturated_max': 0.000603,
            'train.loss_start': 2.31,
            'train.loss_end': 0.39,
            'train.move_first': 0.0862,
            'train.update_ratio_max': 0.022,
            'after.trunk_ratio': 3.88,
            'after.time_ratio': 0.000272,
            'after.dead_max': 0.0781,
            'after.saturated_max': 0.19,
        },
    ),
    Case(
        name="vgg11_default_init", family="cnn", model=vgg11_default,
        batch=partial(image_batch, 10_000, size=32, batch=8),
        expect_init="vanishing", expect_run="vanishing",
        source="Simonyan & Zisserman 2015 (VGG-A, no BN, SGD lr 0.01, momentum 0.9, wd 5e-4); "
               "He et al. 2015, §2.2 (a ReLU layer keeps the variance only at n·Var[w] = 2; "
               "PyTorch's default init gives 1/3); zoo training run",
        train=Train(steps=150,
                    optimizer=lambda m: torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9,
                                                        weight_decay=5e-4),
                    batch=partial(image_batch, size=32, batch=16), outcome="stalls",
                    baseline=CHANCE),
        why="VGG-A (8 convs, 3 fully connected layers with dropout; widths /4), 32×32, no "
            "BN and nothing re-initialised: each ReLU layer keeps about 1/6 of the variance, "
            "so ‖∂L/∂h‖ at the first ReLU is 1.9e-4 of the last's (0.39 per layer) and the "
            "forward std falls ×0.11; half the units of one layer are zero on every image "
            "(their input vanished, their biases rule them). SGD (lr 0.01, momentum 0.9) "
            "learns nothing in 150 steps (2.31 → 2.31; the first conv moved 0.7%); after the "
            "run the ratio is 1.6e-4.",
        measured={
            'init.loss_over_chance': 1.01,
            'init.trunk_ratio': 0.000187,
            'init.trunk_factor': 0.385,
            'init.fwd_growth': 0.112,
            'init.gw_ratio_max': 0.152,
            'init.dead_max': 0.5,
            'init.saturated_max': 0.0,
            'train.loss_start': 2.31,
            'train.loss_end': 2.31,
            'train.move_first': 0.00702,
            'train.update_ratio_max': 0.000312,
            'after.trunk_ratio': 0.000159,
            'after.dead_max': 0.531,
            'after.saturated_max': 0.0,
        },
    ),
]
