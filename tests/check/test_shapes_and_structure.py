"""gw.check across shape changes (pooling, strides) and structure, and its rules argument."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import gradwatch as gw
from gradwatch.check import check
from gradwatch.errors import GradwatchTypeError
from gradwatch.findings import Finding
from tests.test_structure import Net


def he_cnn(depth: int, width: int = 16, stride_every: int = 0) -> nn.Sequential:
    layers: list[nn.Module] = []
    c = 3
    for i in range(depth):
        stride = 2 if stride_every and i % stride_every == stride_every - 1 else 1
        layers += [nn.Conv2d(c, width, 3, stride=stride, padding=1), nn.ReLU()]
        c = width
    model = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 10))
    for m in model.modules():
        if isinstance(m, nn.Conv2d | nn.Linear):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            nn.init.zeros_(m.bias)
    return model


def test_global_average_pooling_is_not_vanishing():
    # the pool divides ‖δ‖ by √(64·64) = 64 once; the convs' signal is flat (He init)
    torch.manual_seed(0)
    cu = gw.check(he_cnn(10), torch.randn(4, 3, 64, 64), torch.randint(0, 10, (4,)))
    assert cu.verdict == "healthy"
    bp = cu.table.set_index("layer")["backprop_norm"]
    assert bp["18"] / bp["22"] < 0.1  # the pool's one-off drop is there...
    assert 0.1 < bp["0"] / bp["18"] < 10  # ...and the conv stack is flat
    info = cu.run.meta["layer_info"]
    assert info["0"]["out_shape"] == [4, 16, 64, 64] and info["22"]["out_shape"] == [4, 10]


def test_strided_convs_are_not_vanishing_but_xavier_relu_convs_are():
    torch.manual_seed(0)
    x, y = torch.randn(4, 3, 16, 16), torch.randint(0, 10, (4,))
    assert gw.check(he_cnn(12, stride_every=4), x, y).verdict == "healthy"
    xavier = he_cnn(24)
    for m in xavier.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.xavier_normal_(m.weight)  # half He's variance under ReLU: 2^-12 in norm
    cu = gw.check(xavier, x, y)
    assert cu.verdict == "vanishing"
    (f,) = [f for f in cu.findings if f.kind == "vanishing"]
    assert f.evidence["same_shape_steps"] == 23 and f.evidence["per_layer_factor"] < 0.8


def test_residual_batchnorm_net_is_recognised_and_not_exploding():
    torch.manual_seed(0)
    cu = gw.check(Net(), torch.randn(4, 3, 8, 8), torch.randint(0, 2, (4,)))
    st = cu.run.meta["structure"]
    assert st["residual"] is True and st["has_norm"] and st["residual_joins"] == 3
    assert not [f for f in cu.findings if f.kind in ("exploding", "healthy_deep")]


def test_rules_are_handed_down_as_an_argument():
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    seen = []

    def rules(run, is_checkup):
        seen.append((len(run.layers), is_checkup))
        return [Finding("dead", ("0",), None, "warning", "test")]

    cu = check(model, torch.randn(8, 4), rules=rules)
    assert seen == [(2, True)] and cu.verdict == "dead"
    assert gw.check(model, torch.randn(8, 4)).verdict == "healthy"  # gw's default rules
    with pytest.raises(GradwatchTypeError, match="rules must be callable"):
        check(model, torch.randn(8, 4), rules="all")
