"""Recurrent nets on the adding problem: tanh RNN at T = 20…500, LSTM and GRU.

Each model reads a (N, T, 2) sequence and predicts the sum of the two marked numbers from
its state at the last step; the loss is mean squared error, and predicting 1 (the mean)
scores 1/6 — the baseline a run must beat to have learnt anything. Initialisation is
PyTorch's default, U[-1/√h, 1/√h] for every weight and bias, unless a case sets the
forget-gate bias.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from .case import Case, Train
from .data import adding_batch
from .mlp import adam

BASELINE = 1 / 6  # MSE of always predicting 1: Var[U1 + U2] = 2/12


class Reader(nn.Module):
    """A recurrent layer read at the last time step by a linear layer."""

    def __init__(self, cell: str, hidden: int = 32, forget_bias: float | None = None):
        super().__init__()
        kind = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}[cell]
        self.rnn = kind(2, hidden, batch_first=True)
        self.out = nn.Linear(hidden, 1)
        if forget_bias is not None:
            _set_keep_gate_bias_(self.rnn, hidden, forget_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, T, 2) -> (N, 1)
        h, _ = self.rnn(x)  # (N, T, hidden)
        return self.out(h[:, -1])


def _set_keep_gate_bias_(rnn: nn.RNNBase, hidden: int, value: float) -> None:
    """Set the bias of the gate that keeps the old state: the sum b_ih + b_hh = ``value``.

    LSTM gates are ordered (input, forget, cell, output): the forget gate's slice is
    [h, 2h) (Gers et al. 2000; Jozefowicz et al. 2015 set it to 1). A GRU keeps its old
    state with the update gate z, ordered (reset, update, new): slice [h, 2h).
    """
    with torch.no_grad():
        for name, b in rnn.named_parameters():
            if name.startswith("bias_ih"):
                b[hidden : 2 * hidden] = value
            elif name.startswith("bias_hh"):
                b[hidden : 2 * hidden] = 0.0


def mse(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean squared error of the predicted sum."""
    return F.mse_loss(out, y)


def _case(name: str, cell: str, steps_t: int, expect_init: str, expect_run: str, source: str,
          outcome: str, *, forget_bias: float | None = None, train_steps: int = 300,
          why: str = "", quick: bool = False) -> Case:
    build = partial(Reader, cell, 32, forget_bias)
    return Case(
        name=name, family="recurrent", model=build, loss=mse,
        batch=partial(adding_batch, 10_000, steps_t, 64),
        expect_init=expect_init, expect_run=expect_run, source=source, why=why, quick=quick,
        train=Train(steps=train_steps, optimizer=adam(1e-2),
                    batch=partial(adding_batch, steps=steps_t, batch=32), outcome=outcome,
                    baseline=BASELINE, drop=0.5),
    )


BENGIO = ("Bengio et al. 1994; Hochreiter & Schmidhuber 1997, §5.4 (adding problem): the "
          "tanh RNN's gradient through time vanishes at long lags, read at the last step")
GATED = ("trains in the zoo's run at T = 50 (1000 Adam steps; the loss leaves the 1/6 "
         "plateau after a few hundred steps)")
CASES = [
    _case("rnn_tanh_t20", "rnn", 20, "vanishing", "vanishing",
          "zoo training run (1000 Adam steps, stays at the 1/6 baseline); Bengio et al. 1994: "
          "a tanh RNN whose W_rec has spectral radius < 1 loses its gradient through time",
          "stalls", train_steps=1000,
          why="Default init U[-1/√h, 1/√h] gives W_rec a spectral radius ≈ 1/√3: the "
              "gradient through time shrinks by ~0.58 or less per step, ~10^-5 over 20 steps. "
              "Even at T = 20 (and at lr 1e-3, 3e-3, 1e-2, width 64) it did not learn."),
    _case("rnn_tanh_t100", "rnn", 100, "vanishing", "vanishing", BENGIO, "stalls"),
    _case("rnn_tanh_t200", "rnn", 200, "vanishing", "vanishing", BENGIO, "stalls",
          train_steps=200, quick=True),
    _case("rnn_tanh_t500", "rnn", 500, "vanishing", "vanishing", BENGIO, "stalls",
          train_steps=100),
    _case("lstm_default", "lstm", 50, "healthy", "healthy",
          "Hochreiter & Schmidhuber 1997, §5.4: the LSTM solves the adding problem at long "
          "lags; " + GATED, "trains", train_steps=1000,
          why="At init the forget gate is ≈ σ(0) = 1/2, so the cell's gradient through time "
              "halves per step; the gate is learnt open (it is a parameter), which a plain "
              "RNN's W_rec cannot do without exploding."),
    _case("lstm_forget_bias_1", "lstm", 50, "healthy", "healthy",
          "Gers et al. 2000; Jozefowicz et al. 2015, §3: a forget-gate bias of 1 helps the "
          "LSTM learn long lags; " + GATED, "trains", forget_bias=1.0, train_steps=1000,
          quick=True),
    _case("gru_default", "gru", 50, "healthy", "healthy",
          "Cho et al. 2014; Chung et al. 2014: the GRU's gated update carries gradients over "
          "long lags; " + GATED, "trains", train_steps=1000),
]
