"""Recurrent nets on the adding problem: tanh RNN at T = 20…500, LSTM and GRU (one layer at
T = 50, four layers at T = 300), and a diagonal linear state-space layer at T = 512.

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
    """A recurrent layer (``layers`` stacked) read at the last time step by a linear layer."""

    def __init__(self, cell: str, hidden: int = 32, forget_bias: float | None = None,
                 layers: int = 1):
        super().__init__()
        kind = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}[cell]
        self.rnn = kind(2, hidden, num_layers=layers, batch_first=True)
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
          "zoo training run (1000 Adam steps, stays above half the 1/6 baseline); Bengio et "
          "al. 1994: a tanh RNN whose W_rec has spectral radius < 1 loses its gradient "
          "through time",
          "stalls", train_steps=1000,
          why="Default init U[-1/√h, 1/√h] gives W_rec a spectral radius ≈ 1/√3: the "
              "gradient through time shrinks by ~0.58 or less per step, ~10^-5 over 20 steps. "
              "At T = 20 the outcome is marginal: the loss stays above half the baseline for "
              "1000 steps (tried at lr 1e-3, 3e-3, 1e-2 and width 64), with some late "
              "progress in some runs; from T = 100 on there is none."),
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


class DiagonalSSM(nn.Module):
    """A diagonal linear state-space layer: h_t = λ ⊙ h_(t-1) + B x_t, read by C at t = T - 1.

    A plain nn.Module (no recurrent module type): the state h_T = Σ_t λ^(T-1-t) ⊙ B x_t is
    computed as a scan. λ is learnt (as log λ), drawn from U[0.3, 0.7]: the gradient reaching
    step t shrinks as λ^(T-1-t), 0.7^511 ≈ 1e-79 over 512 steps (diagonal SSMs need |λ| near 1
    for long memory: Orvieto et al. 2023, "Resurrecting recurrent neural networks for long
    sequences", §3).
    """

    def __init__(self, state: int = 32, lo: float = 0.3, hi: float = 0.7):
        super().__init__()
        self.B = nn.Linear(2, state, bias=False)
        self.C = nn.Linear(state, 1)
        self.log_lam = nn.Parameter(torch.log(torch.empty(state).uniform_(lo, hi)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, T, 2) -> (N, 1)
        u = self.B(x)  # (N, T, state)
        t = torch.arange(u.shape[1], dtype=u.dtype)
        decay = self.log_lam.exp()[None, :] ** (u.shape[1] - 1 - t)[:, None]  # (T, state)
        return self.C((u * decay).sum(1))


def _deep_case(name: str, build, steps_t: int, source: str, why: str, forbid: tuple[str, ...],
               train_steps: int = 100, lr: float = 1e-2) -> Case:
    return Case(
        name=name, family="recurrent", model=build, loss=mse,
        batch=partial(adding_batch, 10_000, steps_t, 32),
        expect_init="vanishing", expect_run="vanishing", source=source, why=why,
        train=Train(steps=train_steps, optimizer=adam(lr),
                    batch=partial(adding_batch, steps=steps_t, batch=16), outcome="stalls",
                    baseline=BASELINE, drop=0.5),
        budget_s=60, forbid_remedies=forbid,
    )


DEEP = ("zoo training runs: 400 Adam steps (lr 1e-3, width 32, batch 32) end at the 1/6 "
        "baseline (0.18); the zoo's run (100 steps, lr 1e-2, width 16) stalls too")
CASES += [
    _deep_case(
        "gru4_t300", partial(Reader, "gru", 16, None, 4), 300,
        "Bengio et al. 1994; " + DEEP,
        "Four stacked GRUs at their default init over 300 steps: the gradient reaching the "
        "first step underflows to 0 (and ~1e-25 at the middle). A gated carry is learnt open "
        "only from a signal that arrives; none does. Clipping opens no gate.",
        ("clip_grad_norm",),
    ),
    _deep_case(
        "lstm4_fb1_t300", partial(Reader, "lstm", 16, 1.0, 4), 300,
        "Jozefowicz et al. 2015 (forget-gate bias 1); Bengio et al. 1994; " + DEEP,
        "Four stacked LSTMs with forget-gate bias 1 over 300 steps: the first step gets "
        "~1e-18 of the last one's gradient, below the floor where training opens a gate "
        "(verdicts.TEMPORAL_GATED_VANISHED). The forget bias is set already and clipping "
        "opens no gate.",
        ("clip_grad_norm", "forget_gate_bias"),
    ),
    _deep_case(
        "ssm_diag_t512", DiagonalSSM, 512,
        "Orvieto et al. 2023, §3 (diagonal linear recurrences need |λ| near 1 for long "
        "memory); zoo training run (300 Adam steps, lr 1e-2): the loss stays at the 1/6 "
        "baseline",
        "A linear recurrence with |λ| ≤ 0.7 written as a plain module (no nn.RNN): only the "
        "gradient at the input, ‖∂L/∂x_t‖ over t, shows its memory, 0.7^511 ≈ 1e-79.",
        ("clip_grad_norm", "lstm_or_gru"), train_steps=300,
    ),
]
