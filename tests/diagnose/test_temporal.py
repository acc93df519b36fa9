"""Rule temporal: gradient flow through time of recurrent layers (one-batch checkups)."""

from __future__ import annotations

import copy

import torch
from torch import nn

import gradwatch as gw
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
    assert found[0].evidence["first_over_last"] == first < temporal.TEMPORAL_VANISHING_ERROR
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
