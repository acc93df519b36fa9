"""Recorded per-layer statistics equal brute-force autograd, on random architectures."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import gradwatch as gw

from .oracle import brute_force_step

ACTS = [nn.Tanh, nn.ReLU, nn.Sigmoid, nn.GELU, nn.LeakyReLU, nn.Identity]


@st.composite
def mlp_specs(draw):
    depth = draw(st.integers(1, 5))
    widths = draw(st.lists(st.integers(2, 12), min_size=depth + 1, max_size=depth + 1))
    acts = draw(st.lists(st.sampled_from(ACTS), min_size=depth, max_size=depth))
    norm = draw(st.sampled_from([None, "layer", "batch"]))
    share = draw(st.booleans())
    freeze = draw(st.integers(-1, depth - 1))
    tie = draw(st.booleans())
    batch = draw(st.integers(2, 6))
    return dict(widths=widths, acts=acts, norm=norm, share=share, freeze=freeze, tie=tie,
                batch=batch)


def build(spec) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    w = spec["widths"]
    mods: list[nn.Module] = []
    linears = []
    for i, act in enumerate(spec["acts"]):
        lin = nn.Linear(w[i], w[i + 1])
        linears.append(lin)
        mods.append(lin)
        if spec["norm"] == "layer":
            mods.append(nn.LayerNorm(w[i + 1]))
        elif spec["norm"] == "batch":
            mods.append(nn.BatchNorm1d(w[i + 1]))
        mods.append(act())
    if spec["share"]:
        shared = nn.Linear(w[-1], w[-1])
        mods += [shared, nn.Tanh(), shared]  # the same module called twice
    head = nn.Sequential(nn.Linear(w[-1], 3))
    if spec["tie"] and w[-1] == 3:
        pass
    mods.append(head)
    model = nn.Sequential(*mods)
    if spec["freeze"] >= 0:
        linears[spec["freeze"]].requires_grad_(False)
    if spec["tie"] and len(linears) >= 2 and linears[0].weight.shape == linears[1].weight.shape:
        linears[1].weight = linears[0].weight  # one parameter owned by two layers
    x = torch.randn(spec["batch"], w[0])
    y = torch.randint(0, 3, (spec["batch"],))
    return model, x, y


def recorded(run, step=0) -> dict[str, dict[str, float]]:
    df = run.stats[run.stats.step == step]
    out: dict[str, dict[str, float]] = {}
    for layer, stat, value in zip(df.layer, df.stat, df.value, strict=True):
        out.setdefault(layer, {})[stat] = value
    return out


def assert_match(got, want, stats=("grad_norm", "backprop_norm"), rtol=1e-5):
    # A gradient that cancels to float32 noise (a bias before BatchNorm: 1e-21 beside 1e-1)
    # differs between two backward passes by that noise, so the absolute tolerance is a few
    # float32 epsilons of the statistic's largest value over the model, not 0.
    scale = {stat: max((abs(ref[stat]) for ref in want.values() if stat in ref), default=0.0)
             for stat in stats}
    for layer, ref in want.items():
        for stat in stats:
            if stat in ref:
                assert stat in got.get(layer, {}), f"{layer}: {stat} missing"
                tol = max(1e-30, 1e-6 * scale[stat])
                assert got[layer][stat] == pytest.approx(ref[stat], rel=rtol, abs=tol), (
                    layer, stat)
            else:
                assert stat not in got.get(layer, {}), f"{layer}: unexpected {stat}"


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mlp_specs())
def test_grad_and_backprop_norms_equal_brute_force(spec):
    model, x, y = build(spec)
    ref_model = copy.deepcopy(model)
    want = brute_force_step(ref_model, lambda m: nn.functional.cross_entropy(m(x), y))
    with gw.watch(model, detail_every=1) as mon:
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        mon.step(loss)
    got = recorded(mon.run)
    assert_match(got, want, ("grad_norm", "backprop_norm", "grad_max_abs"))
    assert got[""]["loss"] == pytest.approx(loss.item(), rel=1e-6)


class LSTMNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Linear(4, 8)
        self.lstm = nn.LSTM(8, 16, batch_first=True, num_layers=2)
        self.gru = nn.GRU(16, 6, batch_first=True)
        self.head = nn.Linear(6, 2)

    def forward(self, x):  # x: (B, T, 4)
        h, _ = self.lstm(torch.tanh(self.emb(x)))  # (B, T, 16)
        g, hn = self.gru(h)  # (B, T, 6), (1, B, 6)
        return self.head(g[:, -1] + hn[0])


class ConvAttnNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.act = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(2)  # no parameters
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.blocks = nn.ModuleDict({"a": nn.Sequential(nn.Linear(8, 8), nn.GELU())})
        self.head = nn.Linear(8, 5)

    def forward(self, x):  # (B, 3, 6, 6)
        z = self.pool(self.act(self.bn(self.conv(x))))  # (B, 8, 2, 2)
        seq = z.flatten(2).transpose(1, 2)  # (B, 4, 8)
        a, _ = self.attn(seq, seq, seq)
        return self.head(self.blocks["a"](a).mean(1))


@pytest.mark.parametrize(
    "factory,shape",
    [(LSTMNet, (3, 7, 4)), (ConvAttnNet, (4, 3, 6, 6))],
    ids=["lstm-gru", "conv-bn-attention"],
)
def test_recurrent_conv_attention_layers_equal_brute_force(factory, shape):
    model = factory()
    x = torch.randn(*shape)
    ref = copy.deepcopy(model)
    want = brute_force_step(ref, lambda m: m(x).square().sum())
    with gw.watch(model, detail_every=1) as mon:
        loss = model(x).square().sum()
        loss.backward()
        mon.step(loss)
    got = recorded(mon.run)
    assert set(got) - {""} == set(want)
    assert_match(got, want, ("grad_norm", "backprop_norm", "grad_max_abs"))


def test_every_statistic_matches_its_definition():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(6, 32), nn.Tanh(), nn.Linear(32, 32), nn.ReLU(),
                          nn.Linear(32, 32), nn.Sigmoid(), nn.Linear(32, 2))
    with torch.no_grad():
        model[0].weight.mul_(4.0)  # push the tanh layer into saturation
        model[2].bias[:8].fill_(-5.0)  # kill some ReLU units
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    x, y = torch.randn(64, 6), torch.randint(0, 2, (64,))
    acts = {}
    hooks = [model[i].register_forward_hook(lambda m, a, o, i=i: acts.__setitem__(i, o.detach()))
             for i in (1, 3, 5)]
    before = [p.detach().clone() for p in model.parameters()]
    with gw.watch(model, optimizer=opt, detail_every=1) as mon:
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        grads = [p.grad.clone() for p in model.parameters()]
        opt.step()
        mon.step(loss)
    for h in hooks:
        h.remove()
    got = recorded(mon.run)
    after = list(model.parameters())
    for li, name in enumerate(["0", "2", "4", "6"]):
        g = [grads[2 * li], grads[2 * li + 1]]
        n = sum(t.numel() for t in g)
        norm = math.sqrt(sum(float((t.double() ** 2).sum()) for t in g))
        assert got[name]["grad_norm"] == pytest.approx(norm, rel=1e-5)
        assert got[name]["grad_rms"] == pytest.approx(norm / math.sqrt(n), rel=1e-5)
        assert got[name]["grad_max_abs"] == pytest.approx(max(float(t.abs().max()) for t in g))
        assert got[name]["nonfinite"] == 0
        w = [after[2 * li], after[2 * li + 1]]
        wn = math.sqrt(sum(float((t.double() ** 2).sum()) for t in w))
        dw = math.sqrt(sum(float(((b.double() - a.double()) ** 2).sum())
                           for a, b in zip(w, before[2 * li: 2 * li + 2], strict=True)))
        assert got[name]["weight_norm"] == pytest.approx(wn, rel=1e-5)
        assert got[name]["update_ratio"] == pytest.approx(dw / wn, rel=1e-4)
    for i, name in ((1, "0"), (3, "2"), (5, "4")):
        a = acts[i].double()
        assert got[name]["act_mean"] == pytest.approx(float(a.mean()), rel=1e-5, abs=1e-7)
        assert got[name]["act_std"] == pytest.approx(float(a.std(unbiased=False)), rel=1e-4)
    sat_tanh = float((acts[1].abs() > 0.97).double().mean())
    assert sat_tanh > 0.1
    assert got["0"]["saturated_frac"] == pytest.approx(sat_tanh)
    sig = acts[5]
    assert got["4"]["saturated_frac"] == pytest.approx(float(((sig < 0.03) | (sig > 0.97))
                                                             .double().mean()))
    dead = float((acts[3].amax(0) <= 0).double().mean())
    assert dead > 0
    assert got["2"]["dead_frac"] == pytest.approx(dead)
    assert "dead_frac" not in got["0"] and "saturated_frac" not in got["2"]


def test_nonfinite_counts_nan_and_inf_in_the_layer_that_has_them():
    model = nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 1))
    with gw.watch(model) as mon:
        model(torch.randn(3, 4)).sum().backward()
        model[2].weight.grad[0, 1] = float("nan")
        model[2].bias.grad[0] = float("inf")
        mon.step()
    got = recorded(mon.run)
    assert got["2"]["nonfinite"] == 2
    assert got["0"]["nonfinite"] == 0
    assert np.isnan(got["2"]["grad_norm"]) or np.isinf(got["2"]["grad_norm"])
