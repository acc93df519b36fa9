"""Property tests over random architectures: watch, check, diagnose and fix never crash, and the
recorded norms equal brute-force autograd."""

from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import gradwatch as gw
from gradwatch.remedies import Residual

from .monitor.oracle import brute_force_step

ACTS = [nn.ReLU, nn.Tanh, nn.Sigmoid, nn.GELU, nn.LeakyReLU, nn.ELU, nn.SELU]
VERDICTS = {"healthy", "vanishing", "exploding", "nonfinite", "dead", "saturated"}


class Recurrent(nn.Module):
    def __init__(self, kind: str, hidden: int, layers: int):
        super().__init__()
        self.rnn = getattr(nn, kind)(3, hidden, num_layers=layers, batch_first=True)
        self.head = nn.Linear(hidden, 2)

    def forward(self, x):  # (B, T, 3)
        h, _ = self.rnn(x)
        return self.head(h[:, -1])


@st.composite
def architectures(draw):
    kind = draw(st.sampled_from(["mlp", "conv", "recurrent", "residual"]))
    batch = draw(st.integers(2, 5))
    act = draw(st.sampled_from(ACTS))
    if kind == "mlp":
        widths = draw(st.lists(st.integers(2, 10), min_size=2, max_size=6))
        norm = draw(st.sampled_from([None, nn.LayerNorm, nn.BatchNorm1d]))
        mods: list[nn.Module] = []
        for a, b in zip(widths, widths[1:], strict=False):
            mods.append(nn.Linear(a, b))
            if norm is not None:
                mods.append(norm(b))
            mods.append(act())
        mods.append(nn.Linear(widths[-1], 2))
        if draw(st.booleans()) and len(widths) > 2:
            mods[0].requires_grad_(False)  # frozen
        if draw(st.booleans()):
            shared = nn.Linear(2, 2)
            mods += [shared, act(), shared]  # the same module twice
        return nn.Sequential(*mods), torch.randn(batch, widths[0])
    if kind == "conv":
        channels = draw(st.lists(st.integers(1, 4), min_size=2, max_size=4))
        mods = []
        for a, b in zip(channels, channels[1:], strict=False):
            mods += [nn.Conv2d(a, b, 3, padding=1), act()]
        mods += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels[-1], 2)]
        return nn.Sequential(*mods), torch.randn(batch, channels[0], 5, 5)
    if kind == "recurrent":
        cell = draw(st.sampled_from(["RNN", "LSTM", "GRU"]))
        model = Recurrent(cell, draw(st.integers(2, 8)), draw(st.integers(1, 2)))
        return model, torch.randn(batch, draw(st.integers(2, 8)), 3)
    width = draw(st.integers(2, 8))
    blocks = draw(st.integers(1, 4))
    mods = [nn.Linear(4, width)]
    mods += [Residual(nn.Sequential(act(), nn.Linear(width, width))) for _ in range(blocks)]
    mods.append(nn.Linear(width, 2))
    return nn.Sequential(*mods), torch.randn(batch, 4)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(architectures())
def test_watch_records_brute_force_norms_and_check_diagnose_fix_do_not_crash(arch):
    model, x = arch
    ref = copy.deepcopy(model)
    want = brute_force_step(ref, lambda m: m(x).square().sum())
    with gw.watch(model, detail_every=1) as mon:
        loss = model(x).square().sum()
        loss.backward()
        mon.step(loss)
    got: dict[str, dict[str, float]] = {}
    df = mon.run.stats
    for layer, stat, value in zip(df.layer, df.stat, df.value, strict=True):
        got.setdefault(layer, {})[stat] = value
    for layer, ref_stats in want.items():
        for stat in ("grad_norm", "backprop_norm"):
            if stat in ref_stats:
                assert got[layer][stat] == pytest.approx(ref_stats[stat], rel=1e-5, abs=1e-30)
    cu = gw.check(model, x)
    assert cu.verdict in VERDICTS
    assert list(cu.table["layer"]) == mon.run.layers
    assert all(isinstance(f, gw.Finding) for f in gw.diagnose(cu))
    assert all(isinstance(f, gw.Finding) for f in gw.diagnose(mon.run))
    fixed, report = gw.fix(model, x, max_rounds=1)
    assert report.verdict_after in VERDICTS
    assert isinstance(fixed, nn.Module) and fixed is not model
