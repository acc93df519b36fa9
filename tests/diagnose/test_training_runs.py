"""Watched training runs on sklearn's digits (bundled, no download), then gw.diagnose."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import nn

import gradwatch as gw
from tests.check.nets import he_normal, mlp, standard


@pytest.fixture(scope="module")
def digits():
    d = load_digits()
    x = torch.tensor(d.data, dtype=torch.float32) / 16.0  # (1797, 64)
    y = torch.tensor(d.target)
    return x, y


def train(model, digits, steps=30, lr=0.1, run_dir=None):
    x, y = digits
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(0)
    with gw.watch(model, run_dir=run_dir, optimizer=opt, detail_every=1) as mon:
        for _ in range(steps):
            idx = torch.randint(0, len(x), (64,), generator=gen)
            opt.zero_grad()
            loss = F.cross_entropy(model(x[idx]), y[idx])
            loss.backward()
            opt.step()
            mon.step(loss)
    return mon.run


def test_sigmoid_standard_init_run_vanishes(digits, tmp_path):
    # Glorot & Bengio 2010: 10 sigmoid layers with standard init
    torch.manual_seed(0)
    model = mlp(10, 64, nn.Sigmoid, standard, d_in=64, d_out=10)
    train(model, digits, run_dir=tmp_path / "sig")
    findings = gw.diagnose(tmp_path / "sig")
    (f,) = [f for f in findings if f.kind == "vanishing"]
    layers = gw.load(tmp_path / "sig").layers
    assert f.severity == "error"
    assert f.steps == (0, 29) and f.evidence["persists"] is True
    assert f.evidence["steps_held"] == 30
    assert f.layers[:3] == tuple(layers[:3])  # input-side layers named, in order
    assert layers[-1] not in f.layers
    assert f.evidence["backprop_ratio"] < 1e-6
    assert "at steps 0-29" in f.message
    # the input-side layers barely move: stalled, from the update ratios (here every step)
    (s,) = [f for f in findings if f.kind == "stalled"]
    assert s.layers[0] == layers[0] and s.steps == (0, 29)


def test_healthy_relu_run_has_no_error(digits):
    torch.manual_seed(0)
    model = mlp(3, 64, nn.ReLU, he_normal, d_in=64, d_out=10)
    run = train(model, digits, lr=0.05)
    findings = gw.diagnose(run)
    assert not [f for f in findings if f.severity == "error"]
    assert not [f for f in findings if f.kind in {"vanishing", "exploding", "nonfinite"}]
    assert run.loss().iloc[-1] < run.loss().iloc[0]  # it learns


def test_deep_batchnorm_plain_net_is_not_vanishing(digits):
    # He et al. 2016: plain nets with BN have healthy gradient norms; their trouble with
    # depth is optimisation, not vanishing. 21 weight layers + 20 BatchNorm layers.
    torch.manual_seed(0)
    model = mlp(21, 64, nn.ReLU, he_normal, d_in=64, d_out=10, batchnorm=True)
    cu = gw.check(model, digits[0][:64], digits[1][:64])
    assert cu.verdict == "healthy"
    assert not [f for f in cu.findings if f.kind in {"vanishing", "exploding"}]
    (info,) = [f for f in cu.findings if f.kind == "healthy_deep"]
    assert info.evidence["depth"] == 21 and "residual" in info.message
    assert 1e-2 < cu.table["backprop_ratio"].min() and cu.table["backprop_ratio"].max() < 1e3
    run = train(model, digits, steps=5, lr=0.01)
    findings = gw.diagnose(run)
    assert not [f for f in findings if f.kind in {"vanishing", "exploding"}]
    assert [f.kind for f in findings if f.severity == "info"] == ["healthy_deep"]
