"""Small networks with the initialisations of the classic papers, for check/diagnose tests."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn


def xavier_normal(lin: nn.Linear) -> None:
    nn.init.xavier_normal_(lin.weight)
    nn.init.zeros_(lin.bias)


def he_normal(lin: nn.Linear) -> None:
    nn.init.kaiming_normal_(lin.weight, mode="fan_in", nonlinearity="relu")
    nn.init.zeros_(lin.bias)


def standard(lin: nn.Linear) -> None:
    """Glorot & Bengio's "standard" init U[-1/sqrt(n), 1/sqrt(n)] (n = fan-in)."""
    b = 1 / math.sqrt(lin.in_features)
    nn.init.uniform_(lin.weight, -b, b)
    nn.init.uniform_(lin.bias, -b, b)


def gaussian(sigma_w2: float) -> Callable[[nn.Linear], None]:
    """W ~ N(0, sigma_w2 / fan_in), b = 0 (mean-field parametrisation)."""

    def init(lin: nn.Linear) -> None:
        nn.init.normal_(lin.weight, 0.0, math.sqrt(sigma_w2 / lin.in_features))
        nn.init.zeros_(lin.bias)

    return init


def mlp(
    depth: int,
    width: int,
    act: type[nn.Module],
    init: Callable[[nn.Linear], None],
    d_in: int | None = None,
    d_out: int | None = None,
    batchnorm: bool = False,
) -> nn.Sequential:
    """``depth`` Linear layers; each but the last (when d_out is given) followed by ``act``."""
    layers: list[nn.Module] = []
    n_in = d_in or width
    hidden = depth - 1 if d_out else depth
    for _ in range(hidden):
        lin = nn.Linear(n_in, width)
        init(lin)
        layers.append(lin)
        if batchnorm:
            layers.append(nn.BatchNorm1d(width))
        layers.append(act())
        n_in = width
    if d_out:
        lin = nn.Linear(n_in, d_out)
        init(lin)
        layers.append(lin)
    return nn.Sequential(*layers)


class SqrtLayer(nn.Module):
    """A layer with its own weight whose forward takes sqrt of a negative: NaN."""

    def __init__(self, n: int):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sqrt(-(x**2) * self.scale - 1.0)


class LastStep(nn.Module):
    """A recurrent layer followed by a readout of its last time step."""

    def __init__(self, rnn: nn.RNNBase, hidden: int):
        super().__init__()
        self.rnn = rnn
        self.head = nn.Linear(hidden, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x)  # (N, T, H) with batch_first
        return self.head(out[:, -1])
