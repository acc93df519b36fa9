"""Held-out fully connected nets on the digits: inits practitioners get wrong,
BN without skips, and a deep sigmoid autoencoder."""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from ..case import Case, Train
from ..data import digits_batch
from ..mlp import CHANCE, probe
from .common import Entry, sgd
from .measure import Probe, modules_of


def default_mlp(depth: int, width: int, act: type[nn.Module], n_in: int = 64,
                n_out: int = 10, norm: bool = False) -> nn.Sequential:
    """``depth`` nn.Linear layers with PyTorch's default init (Kaiming-uniform with a = √5:
    U[−1/√n, 1/√n], n·Var[w] = 1/3), ``act`` between them, BatchNorm1d before each
    activation if ``norm``."""
    dims = [n_in] + [width] * (depth - 1) + [n_out]
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:], strict=True)):
        layers.append(nn.Linear(a, b))
        if i < depth - 1:
            if norm:
                layers.append(nn.BatchNorm1d(b))
            layers.append(act())
    return nn.Sequential(*layers)


def orthogonal_tanh(depth: int = 64, width: int = 128) -> nn.Sequential:
    """tanh with orthogonal weights (gain 1) and zero biases: σw² = 1, σb² = 0, critical and
    near dynamical isometry (Saxe et al. 2014; Pennington et al. 2017, §4)."""
    model = default_mlp(depth, width, nn.Tanh)
    for m in model:
        if isinstance(m, nn.Linear):
            nn.init.orthogonal_(m.weight)
            nn.init.zeros_(m.bias)
    return model


def he_bn_mlp(depth: int = 48, width: int = 128) -> nn.Sequential:
    """Linear-BN-ReLU × (depth − 1), then a linear classifier; He init, no shortcut."""
    model = default_mlp(depth, width, nn.ReLU, norm=True)
    for m in model:
        if isinstance(m, nn.Linear):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            nn.init.zeros_(m.bias)
    return model


class Autoencoder(nn.Module):
    """A deep sigmoid autoencoder 64-128-64-32-8-32-64-128-64 (the shape of Hinton &
    Salakhutdinov 2006), PyTorch's default init, linear output."""

    def __init__(self, dims=(64, 128, 64, 32, 8)):
        super().__init__()
        layers: list[nn.Module] = []
        full = list(dims) + list(dims[-2::-1])
        for i, (a, b) in enumerate(zip(full[:-1], full[1:], strict=True)):
            layers.append(nn.Linear(a, b))
            if i < len(full) - 2:
                layers.append(nn.Sigmoid())
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def reconstruct_batch(i: int, batch: int = 64):
    """Digits as their own targets (standardised pixels: predicting 0 scores an MSE of ≈ 1)."""
    x, _ = digits_batch(i, batch=batch)
    return x, x


def mse(out, target):
    """Mean squared error."""
    return F.mse_loss(out, target)


def _digits(name: str, family: str, build, expect_init: str, expect_run: str, source: str,
            probe_: Probe, outcome: str, *, opt, steps: int = 300, why: str = "",
            measured: dict | None = None, drop: float = 0.3) -> Entry:
    case = Case(name=name, family=family, model=build, batch=probe, expect_init=expect_init,
                expect_run=expect_run, source=source, why=why, measured=measured or {},
                train=Train(steps=steps, optimizer=opt, batch=digits_batch, outcome=outcome,
                            baseline=CHANCE, drop=drop))
    return Entry(case, probe_)


ENTRIES = [
    _digits("selu_default_init_48", "selu", partial(default_mlp, 48, 128, nn.SELU),
            "vanishing", "vanishing",
            "Klambauer et al. 2017, §2-3: SELU self-normalises only with LeCun-normal weights "
            "(n·Var[w] = 1); PyTorch's default gives 1/3, below the fixed point",
            Probe(trunk=modules_of((nn.SELU,)), chance=CHANCE), "stalls", opt=sgd(0.01),
            why="48 SELU layers with nn.Linear's default init (U[−1/√n, 1/√n], n·Var[w] = 1/3 "
                "instead of LeCun's 1): ‖∂L/∂h‖ shrinks 0.80 per layer, to 3e-5 over the net, "
                "and the forward std to 0.19; SGD (lr 0.01, momentum 0.9) learns nothing in 300 "
                "steps (2.30 → 2.31), the first layer moved 7e-5 of its norm. After training "
                "the ratio is 2.4e-5."),
    _digits("tanh_orthogonal_64", "tanh_orthogonal", partial(orthogonal_tanh, 64, 128),
            "healthy", "healthy",
            "Saxe et al. 2014; Pennington et al. 2017, §4-5: orthogonal tanh nets at σw² = 1 "
            "keep the input-output Jacobian well conditioned and train fast at depth",
            Probe(trunk=modules_of((nn.Tanh,)), chance=CHANCE), "trains", opt=sgd(0.01),
            why="64 tanh layers of width 128, orthogonal weights, zero biases: ‖∂L/∂h‖ 0.97 per "
                "layer (0.20 over the net), 0.2% of the units in the tails; SGD (lr 0.01, "
                "momentum 0.9) trains it: 2.03 → 0.21."),
    _digits("bn_mlp_48", "bn_mlp", partial(he_bn_mlp, 48, 128), "exploding", "exploding",
            "Yang et al. 2019, §3-4 (mean field theory of batch normalization): a deep "
            "fully connected BN-ReLU net's gradient explodes at init, ≈ (π/(π−1))^(L/2)",
            Probe(trunk=modules_of((nn.ReLU,)), chance=CHANCE), "stalls", opt=sgd(0.1),
            why="47 Linear-BN-ReLU layers of width 128, He init, no shortcut: ‖∂L/∂h‖ grows "
                "1.21 per layer toward the input (Yang et al.'s √(π/(π−1)) = 1.21), ×5.9e3 over "
                "the net, with a flat forward std; the first layer's ‖∇W‖/‖W‖ is 154, so SGD "
                "at lr 0.1 makes its first update 14× the weights and grows it 458× in 300 "
                "steps, and the loss stalls (2.62 → 1.95 against ln 10 = 2.30)."),
    Entry(Case(
        name="sigmoid_autoencoder", family="autoencoder", model=Autoencoder, batch=lambda:
        reconstruct_batch(10_000, 256), loss=mse, expect_init="vanishing",
        expect_run="vanishing",
        source="Hinton & Salakhutdinov 2006: deep sigmoid autoencoders from random init "
               "'gradients in the early layers are tiny', they do not train without "
               "pretraining",
        train=Train(steps=300, optimizer=sgd(0.1), batch=reconstruct_batch, outcome="stalls"),
        why="64-128-64-32-8-32-64-128-64 with sigmoid hidden layers, default init, "
            "reconstructing standardised digits: ‖∂L/∂h‖ shrinks 0.14 per layer (8e-6 over the "
            "7 sigmoid layers); SGD (lr 0.1, momentum 0.9) barely moves the MSE (0.99 → 0.90, "
            "≈ 1 for predicting 0), the first layer moved 2e-5 of its norm; after training "
            "the ratio is still 8e-6."),
        Probe(trunk=modules_of((nn.Sigmoid,)))),
]
