"""The gradient through time of a model without recurrence is judged by its reach.

Without a recurrence nothing multiplies a per-step factor into ‖∂L/∂x_t‖: the gradient at step
t sums the paths from x_t to the loss. In a stack of dilated causal convolutions (WaveNet,
van den Oord et al. 2016) with kernel 2 and dilations 1, 2, 4, …, lag k reaches the output
along one path, which crosses the blocks of the bits set in k: with branch gain c its
gradient is c^popcount(k), far below the last step's at t = 0 (every bit set) yet usable at
most lags. A recurrence (or a decay computed without a loop) compounds a factor per step and
reaches only a tail of the sequence. Both are built here so that the gradient is known in
closed form.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

import gradwatch as gw
from gradwatch.probes import compounding_fit, temporal_reach
from gradwatch.structure import describe
from gradwatch.verdicts import (
    TEMPORAL_COMPOUNDING_FIT,
    TEMPORAL_REACH,
    TEMPORAL_VANISHING_ERROR,
)
from tests.diagnose.nets_by_design import DiagonalSSM

RECURRENCE_REMEDIES = {"slow_decay_init", "chrono_init", "lstm_or_gru", "forget_gate_bias",
                       "orthogonal"}


class DilatedStack(nn.Module):
    """``levels`` residual blocks h ← h + c·h[t − d] (a kernel-2 causal conv, dilation d =
    2^i, whose only tap is the past one), read at the last step by a linear head."""

    def __init__(self, levels: int, c: float):
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv1d(1, 1, 2, dilation=2**i, bias=False)
                                   for i in range(levels))
        with torch.no_grad():
            for conv in self.convs:
                conv.weight.copy_(torch.tensor([[[c, 0.0]]]))
        self.head = nn.Linear(1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, T, 1) -> (N, 1)
        h = x.transpose(1, 2)
        for conv in self.convs:
            h = h + conv(F.pad(h, (conv.dilation[0], 0)))
        return self.head(h[:, :, -1])


class LoopRNN(nn.Module):
    """A tanh RNN written as a loop: one cell read at every step (no nn.RNN)."""

    def __init__(self, d: int = 8, gain: float = 0.3):
        super().__init__()
        self.inp, self.rec, self.head = nn.Linear(1, d), nn.Linear(d, d, bias=False), \
            nn.Linear(d, 1)
        with torch.no_grad():
            self.rec.weight.copy_(gain * torch.linalg.qr(torch.randn(d, d))[0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, T, 1) -> (N, 1)
        h = torch.zeros(x.shape[0], self.rec.in_features)
        for t in range(x.shape[1]):
            h = torch.tanh(self.rec(h) + self.inp(x[:, t]))
        return self.head(h)


def _popcount_profile(t_len: int, c: float) -> np.ndarray:
    lag = t_len - 1 - np.arange(t_len)
    return c ** np.array([bin(int(k)).count("1") for k in lag], dtype=np.float64)


def _batch(t_len: int, n: int = 4):
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, t_len, 1, generator=g), torch.randn(n, 1, generator=g)


def _brute_force(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> np.ndarray:
    x = x.clone().requires_grad_(True)
    F.mse_loss(model(x), y).backward()
    return x.grad.double().pow(2).sum(dim=(0, 2)).sqrt().numpy()


def _time(cu):
    return [f for f in cu.findings if f.evidence.get("through") == "time"]


def test_reach_and_fit_in_closed_form():
    t = np.arange(64)
    geometric = 0.8 ** (63 - t)  # 0.8^k >= 1e-4 for k <= 41
    assert temporal_reach(geometric, 1e-4) == pytest.approx((42 / 64, 42 / 64))
    assert compounding_fit(geometric) == pytest.approx(1.0)
    uneven = _popcount_profile(64, 0.12)  # 0.12^4 >= 1e-4 > 0.12^5: lags with <= 4 bits
    share, back = temporal_reach(uneven, 1e-4)
    assert share == pytest.approx(57 / 64) and back == pytest.approx(61 / 64)  # lag 60
    assert compounding_fit(uneven) < 0.5
    assert all(math.isnan(v) for v in temporal_reach(np.zeros(8), 1e-4))


def test_an_uneven_gradient_that_reaches_the_steps_is_not_vanishing():
    torch.manual_seed(0)
    model = DilatedStack(6, 0.12)
    x, y = _batch(64)
    measured = _brute_force(model, x, y)
    np.testing.assert_allclose(measured / measured[-1], _popcount_profile(64, 0.12),
                               rtol=1e-5)
    cu = gw.check(model, x, y, F.mse_loss)
    info = cu.run.meta["checkup"]["temporal"]["(input)"]
    # the premise: the first step's share is far below the error line, the profile uneven
    assert info["first_over_last"] == pytest.approx(0.12**6, rel=1e-4)
    assert info["first_over_last"] < TEMPORAL_VANISHING_ERROR
    assert info["reach"] == pytest.approx(57 / 64) and info["reach"] >= TEMPORAL_REACH
    assert info["fit"] < TEMPORAL_COMPOUNDING_FIT
    assert cu.run.meta["structure"]["reused_layers"] == {}
    (f,) = _time(cu)
    assert (cu.verdict, f.kind, f.severity, f.remedies) == ("healthy", "vanishing", "info", ())
    assert "57 of the 64 steps" in f.message and "no recurrence" in f.message
    assert f.evidence["reach"] == pytest.approx(57 / 64)


def test_an_uneven_gradient_that_misses_most_steps_is_vanishing_without_a_recurrence_remedy():
    torch.manual_seed(0)
    cu = gw.check(DilatedStack(6, 0.008), *_batch(64), F.mse_loss)
    info = cu.run.meta["checkup"]["temporal"]["(input)"]
    assert info["reach"] == pytest.approx(7 / 64)  # lags 0 and the six powers of 2
    (f,) = _time(cu)
    assert (cu.verdict, f.severity) == ("vanishing", "error")
    assert not set(f.remedies) & RECURRENCE_REMEDIES
    assert "7 of the 64 steps, scattered" in f.message


def test_a_decay_computed_without_a_loop_still_vanishes():
    torch.manual_seed(0)
    cu = gw.check(DiagonalSSM(d_in=1, d=4, lo=0.5, hi=0.5, scan=True), *_batch(64),
                  F.mse_loss)
    info = cu.run.meta["checkup"]["temporal"]["(input)"]
    assert info["fit"] > 0.99 and info["reach"] == pytest.approx(14 / 64)  # 0.5^13 >= 1e-4
    (f,) = _time(cu)
    assert (cu.verdict, f.severity, f.remedies) == ("vanishing", "error", ("slow_decay_init",))
    assert "A per-step factor compounds" in f.message


def test_a_cell_read_at_every_step_is_a_recurrence_found_in_the_graph():
    torch.manual_seed(0)
    model = LoopRNN()
    x, y = _batch(40)
    loss = F.mse_loss(model(x), y)
    assert describe(model, loss)["reused_layers"] == {"rec": 40, "inp": 40}
    assert describe(DilatedStack(6, 0.12), F.mse_loss(DilatedStack(6, 0.12)(x), y))[
        "reused_layers"] == {}
    cu = gw.check(model, x, y, F.mse_loss)
    (f,) = _time(cu)
    # judged by its decay as a recurrence, not by reach
    assert (cu.verdict, f.severity) == ("vanishing", "error") and "judged_on" not in f.evidence
