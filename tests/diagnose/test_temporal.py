"""Rule temporal: gradient flow through time of recurrent layers (checkups and training runs)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

import gradwatch as gw
from gradwatch import verdicts
from gradwatch.diagnose import temporal
from gradwatch.diagnose._view import RunView


class Seq(nn.Module):
    def __init__(self, kind="RNN"):
        super().__init__()
        self.rnn = getattr(nn, kind)(4, 32, batch_first=True)
        self.head = nn.Linear(32, 1)

    def forward(self, x):
        h, _ = self.rnn(x)
        return self.head(h[:, -1])


def test_vanilla_rnn_over_60_steps_vanishes_through_time():
    torch.manual_seed(0)
    cu = gw.check(Seq("RNN"), torch.randn(8, 60, 4))
    found = [f for f in cu.findings if f.evidence.get("through") == "time"]
    assert len(found) == 1 and found[0].kind == "vanishing" and found[0].severity == "error"
    assert found[0].layers == ("rnn",)
    first = cu.temporal[cu.temporal.layer == "rnn"]["ratio"].iloc[0]
    assert found[0].evidence["first_over_last"] == first < verdicts.TEMPORAL_VANISHING_ERROR
    assert cu.verdict == "vanishing"


def test_lstm_with_a_large_forget_bias_carries_the_gradient_back():
    torch.manual_seed(0)
    model = Seq("LSTM")
    with torch.no_grad():  # forget-gate bias 3 (gates ordered i, f, g, o)
        for name in ("bias_ih_l0", "bias_hh_l0"):
            getattr(model.rnn, name)[32:64].fill_(1.5)
    cu = gw.check(model, torch.randn(8, 60, 4))
    assert not [f for f in cu.findings if f.evidence.get("through") == "time"]


def test_short_sequences_are_not_judged_and_explosions_are():
    torch.manual_seed(0)
    cu = gw.check(Seq("RNN"), torch.randn(8, 3, 4))
    assert not [f for f in cu.findings if f.evidence.get("through") == "time"]
    run = copy.deepcopy(cu.run)
    run.meta["checkup"]["temporal"] = {"rnn": {"first_over_last": 5e3, "steps": 40}}
    found = temporal.rule(RunView(run, is_checkup=True))
    assert [(f.kind, f.severity) for f in found] == [("exploding", "error")]
    assert "clip_grad_norm" in found[0].remedies


def test_a_signal_that_underflows_through_time_is_vanished_not_missing():
    # Bengio et al. 1994: a tanh RNN read at the last of 200 steps; the first steps' gradient
    # underflows to exactly 0 in float32
    torch.manual_seed(0)
    cu = gw.check(Seq("RNN"), torch.randn(8, 200, 4))
    flow = cu.temporal[cu.temporal.layer == "rnn"]["ratio"].to_numpy()
    assert flow[0] == 0.0 and flow[-1] == 1.0
    (f,) = [f for f in cu.findings if f.evidence.get("through") == "time"]
    assert (f.kind, f.severity, cu.verdict) == ("vanishing", "error", "vanishing")
    assert f.evidence["underflow"] is True and "underflows to 0" in f.message
    # a vanilla RNN is offered an LSTM/GRU (an LSTM is not); clipping opens nothing
    assert f.remedies[:2] == ("lstm_or_gru", "orthogonal") and "clip_grad_norm" not in f.remedies


def test_an_lstm_is_offered_the_forget_bias_not_an_lstm():
    torch.manual_seed(0)
    model = Seq("LSTM")
    with torch.no_grad():
        for name in ("bias_ih_l0", "bias_hh_l0"):
            getattr(model.rnn, name).fill_(-2.0)  # every gate nearly shut: the carry fades
    cu = gw.check(model, torch.randn(8, 100, 4))
    (f,) = [f for f in cu.findings if f.evidence.get("through") == "time"]
    assert f.kind == "vanishing" and f.remedies[0] == "forget_gate_bias"
    assert "lstm_or_gru" not in f.remedies and "set the LSTM forget-gate bias to 1" in f.message


def _adding_run(kind: str, steps_t: int, train_steps: int, tmp_path):
    """A short watched training run on the adding problem (Hochreiter & Schmidhuber 1997)."""
    torch.manual_seed(0)
    model = Seq(kind)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(1)
    with gw.watch(model, optimizer=opt, run_dir=tmp_path / kind, detail_every=2) as mon:
        for _ in range(train_steps):
            x = torch.zeros(16, steps_t, 4)
            x[..., 0] = torch.rand(16, steps_t, generator=g)
            x[:, 0, 1] = x[:, steps_t // 2, 1] = 1.0
            y = (x[..., 0] * x[..., 1]).sum(1, keepdim=True)
            opt.zero_grad()
            loss = nn.functional.mse_loss(model(x), y)
            loss.backward()
            opt.step()
            mon.step(loss)
    return gw.load(tmp_path / kind)


def test_a_training_run_of_a_tanh_rnn_at_200_steps_is_vanishing(tmp_path):
    run = _adding_run("RNN", 200, 12, tmp_path)
    first, last = (run.pivot(s)["rnn"] for s in ("time_grad_first", "time_grad_last"))
    assert (run.pivot("time_steps")["rnn"] == 200).all()
    assert float((first / last).iloc[-1]) < verdicts.TEMPORAL_VANISHING_ERROR
    findings = gw.diagnose(run)
    found = [f for f in findings if f.evidence.get("through") == "time"]
    assert [(f.kind, f.severity, f.layers) for f in found] == [("vanishing", "error", ("rnn",))]
    assert verdicts.verdict(findings) == "vanishing"


def test_a_training_run_of_an_lstm_is_judged_by_how_its_flow_through_time_moved(tmp_path):
    # gated like any cell, by measurement: at T = 50 Adam opens the gates within 12 steps
    # (the first step's share grows ~10^4-fold), which is a note, not a verdict
    run = _adding_run("LSTM", 50, 12, tmp_path)
    findings = gw.diagnose(run)
    (f,) = [f for f in findings if f.evidence.get("through") == "time"]
    assert (f.kind, f.severity, f.layers) == ("vanishing", "info", ("rnn",))
    assert f.evidence["gated"] is True and f.evidence["measured"] == "training run"
    assert f.evidence["opened"] > temporal.GATE_OPENING and "opening in training" in f.message
    assert f.evidence["first_recorded"] < 1e-9 < f.evidence["first_over_last"]
    assert verdicts.verdict(findings) != "vanishing"


def test_a_training_run_records_the_flow_through_time_at_the_model_input():
    # a linear recurrence written as a plain module: no recurrent layer to hook, so the
    # Monitor keeps ‖∂L/∂x_0‖ and ‖∂L/∂x_(T-1)‖ of the model input at the detail steps
    from tests.diagnose.nets_by_design import DiagonalSSM

    torch.manual_seed(0)
    model = DiagonalSSM(d=8, lo=0.5, hi=0.5, scan=True)  # λ = 0.5: 0.5^99 over 100 steps
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(1)
    with gw.watch(model, run_dir=None, optimizer=opt, detail_every=2, diagnose=False) as mon:
        for _ in range(6):
            x, y = torch.rand(4, 100, 2, generator=g), torch.rand(4, 1, generator=g)
            opt.zero_grad()
            loss = nn.functional.mse_loss(model(x), y)
            loss.backward()
            opt.step()
            mon.step(loss)
    df = mon.run.stats
    rows = df[(df.layer == "") & df.stat.isin(["time_grad_first", "time_grad_last"])]
    assert sorted(rows.step.unique()) == [0, 2, 4]  # detail steps only
    first = rows[rows.stat == "time_grad_first"].value.to_numpy()
    last = rows[rows.stat == "time_grad_last"].value.to_numpy()
    # ~0.5^99 = 1.6e-30: a plain float32 norm would square these entries to 0
    assert np.all(first > 0) and np.all(first / last < 1e-25)
    (f,) = [f for f in gw.diagnose(mon.run) if f.evidence.get("through") == "time"]
    assert (f.kind, f.severity, f.layers) == ("vanishing", "error", ())
    assert f.evidence["measured"] == "training run" and f.evidence["measured_at"] == "model input"
    assert f.remedies == ("slow_decay_init",) and "at the end of the training run" in f.message


def test_scaled_norm_does_not_underflow():
    from gradwatch.stats.temporal import scaled_norm

    t = torch.full((1000,), 1e-30)
    assert torch.linalg.vector_norm(t) == 0  # the float32 norm squares them away
    assert float(scaled_norm(t)) == pytest.approx(1e-30 * 1000**0.5, rel=1e-5)
    assert float(scaled_norm(torch.zeros(5))) == 0.0
    x = torch.randn(7, 3)
    assert float(scaled_norm(x)) == pytest.approx(float(torch.linalg.vector_norm(x)), rel=1e-6)
