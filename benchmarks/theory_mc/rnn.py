"""Recurrent nets through time: ‖∂L/∂x_t‖² at each layer's input, by autograd over seeds.

Independent of ``gradwatch.theory``: each seed draws a fresh model, runs it in float64 (a
gradient that falls by 10⁵⁰ over 100 steps underflows float32) on the fixed batch, takes
L = Σ R ⊙ y with R a fresh standard Gaussian tensor of the output's shape, and reads the
gradient of the recurrent module's input sequence at every step (a forward pre-hook gives
it a detached copy that requires grad). A stack of ``num_layers`` > 1 is recomputed by a
chain of one-layer nn.RNN copies of its layers (checked equal to the fused module's output),
so the gradient at each inner layer's input is seen too. Each step's ratio to the last step
is averaged in log over the seeds.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import nn

from .readout import backprop_random_readout


class SequenceClassifier(nn.Module):
    """An nn.RNN/LSTM/GRU and a linear head: on the last step's output, every step's
    (``read="all"``), or the final states of every layer (``read="h_n"``)."""

    def __init__(
        self,
        cell: type,
        inputs: int,
        hidden: int,
        layers: int = 1,
        nonlinearity: str = "tanh",
        batch_first: bool = True,
        read: str = "last",
        sigma_hh2: float | None = None,
        forget_bias: float | None = None,
    ):
        super().__init__()
        kw = {"nonlinearity": nonlinearity} if cell is nn.RNN else {}
        self.rnn = cell(inputs, hidden, num_layers=layers, batch_first=batch_first, **kw)
        self.head = nn.Linear(hidden * (layers if read == "h_n" else 1), 10)
        self.read, self.batch_first = read, batch_first
        if forget_bias is not None:  # an LSTM's b_f (b_ih + b_hh) set to this, as is common
            with torch.no_grad():
                self.rnn.bias_ih_l0[hidden : 2 * hidden] = forget_bias
                self.rnn.bias_hh_l0[hidden : 2 * hidden] = 0.0
        if sigma_hh2 is not None:
            for k in range(layers):
                nn.init.normal_(
                    getattr(self.rnn, f"weight_hh_l{k}"), std=math.sqrt(sigma_hh2 / hidden)
                )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, h = self.rnn(x)
        h = h[0] if isinstance(h, tuple) else h  # an LSTM's (h_n, c_n)
        if self.read == "all":
            return self.head(out)
        if self.read == "h_n":
            return self.head(h.transpose(0, 1).reshape(h.shape[1], -1))
        return self.head(out[:, -1] if self.batch_first else out[-1])


def _recurrent(model: nn.Module) -> nn.RNNBase:
    return next(m for m in model.modules() if isinstance(m, nn.RNNBase))


def input_gradients(model: nn.Module, inputs: tuple, seed: int) -> np.ndarray:
    """‖∂L/∂x^l_t‖² of shape (layers, T) for L = Σ R ⊙ y, R ~ N(0, 1) drawn from ``seed``."""
    rnn = _recurrent(model)
    kept: list[torch.Tensor] = []

    def pre(_m, args):
        x = args[0].detach().requires_grad_(True)
        kept.append(x)
        return (x, *args[1:])

    def post(_m, args, out):
        if not isinstance(rnn, nn.RNN) or rnn.num_layers == 1:
            return out
        x, h0 = args[0], (args[1] if len(args) > 1 else None)
        finals = []
        for k in range(rnn.num_layers):
            one = nn.RNN(
                x.shape[-1],
                rnn.hidden_size,
                nonlinearity=rnn.nonlinearity,
                batch_first=rnn.batch_first,
            ).to(x.dtype)
            with torch.no_grad():
                for p in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                    getattr(one, f"{p}_l0").copy_(getattr(rnn, f"{p}_l{k}"))
            if k:
                x.retain_grad()
                kept.append(x)
            x, h = one(x, None if h0 is None else h0[k : k + 1])
            finals.append(h)
        h_n = torch.cat(finals)
        assert torch.allclose(x, out[0], atol=1e-10) and torch.allclose(h_n, out[1], atol=1e-10)
        return x, h_n

    handles = [rnn.register_forward_pre_hook(pre), rnn.register_forward_hook(post)]
    try:
        backprop_random_readout(model, inputs, seed)
    finally:
        for h in handles:
            h.remove()
    time_dim = 1 if rnn.batch_first else 0
    return np.stack(
        [
            x.grad.double()
            .pow(2)
            .movedim(time_dim, 0)
            .reshape(x.shape[time_dim], -1)
            .sum(1)
            .numpy()
            for x in kept
        ]
    )


def measure_time(config: Any, seeds: int | None = None) -> dict[str, Any]:
    """Geometric mean over seeds of ‖∂L/∂x^l_t‖² / ‖∂L/∂x^l_{T−1}‖², layer by layer."""
    n = seeds or config.seeds
    inputs = tuple(t.double() if t.is_floating_point() else t for t in config.batch())
    rows = []
    for s in range(n):
        torch.manual_seed(1000 + s)
        model = config.build().double()
        model.train()
        e = input_gradients(model, inputs, seed=5000 + s)
        with np.errstate(divide="ignore"):
            rows.append(np.log10(e / e[:, -1:]))
    arr = np.array(rows)
    return {"log10": arr.mean(axis=0), "sd": arr.std(axis=0), "seeds": n}


def time_pairs(table: Any, mc: dict[str, Any]) -> list[tuple[str, float, float, float]]:
    """(name ``l0 t=3``, predicted attenuation, measured log10, its sd) per layer and step."""
    pairs = []
    for k in range(mc["log10"].shape[0]):
        for t in range(mc["log10"].shape[1]):
            sel = (
                table[(table["rnn_layer"] == k) & (table["t"] == t)]
                if "rnn_layer" in table.columns
                else table.iloc[:0]
            )
            a = float(sel["attenuation"].iloc[0]) if len(sel) else math.nan
            pairs.append((f"l{k} t={t}", a, float(mc["log10"][k, t]), float(mc["sd"][k, t])))
    return pairs
