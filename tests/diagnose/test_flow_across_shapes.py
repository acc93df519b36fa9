"""The back-propagated signal's decay counts every layer it crosses, shape changes included.

The flow walk compares ‖δ‖ only between layers of one output shape, since an operation that
changes the shape adds a factor of its own (an average pool over 2×2 halves ‖δ‖). But the
layer a shape change crosses (a conv after a max pool) multiplies δ by its per-layer factor
as its neighbours do: a VGG with a pool after every one or two convs counts 3 of its 9 steps,
so at PyTorch's default init (fan_in·Var(W) = 1/3, so ‖δ‖ × √(1/6) ≈ 0.41 per ReLU layer, He
et al. 2015) the counted steps alone show ×0.04 while the whole net loses ×2e-4.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import gradwatch as gw
from gradwatch.diagnose._flow import flow_steps
from gradwatch.diagnose._view import RunView
from gradwatch.verdicts import VANISHING_RATIO, VANISHING_RATIO_WITH_FACTOR

#: A small VGG-A: a 2×2 pool after convs 1, 2, 4, 6 and 8 ("M").
CFG = (8, "M", 16, "M", 32, 32, "M", 64, 64, "M", 64, 64, "M")


def vgg(he: bool, pool: type[nn.Module] = nn.MaxPool2d) -> nn.Sequential:
    layers: list[nn.Module] = []
    c = 3
    for v in CFG:
        if v == "M":
            layers.append(pool(2))
        else:
            layers += [nn.Conv2d(c, int(v), 3, padding=1), nn.ReLU()]
            c = int(v)
    layers += [nn.Flatten(), nn.Linear(c, 64), nn.ReLU(), nn.Linear(64, 10)]
    model = nn.Sequential(*layers)
    if he:
        for m in model.modules():
            if isinstance(m, nn.Conv2d | nn.Linear):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                nn.init.zeros_(m.bias)
    return model


def _check(model: nn.Module):
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(16, 3, 32, 32, generator=g), torch.randint(0, 10, (16,), generator=g)
    cu = gw.check(model, x, y)
    (fs,) = flow_steps(RunView(cu.run, is_checkup=True))
    return cu, fs


def test_crossed_decay_compounds_the_factor_only_as_far_as_measured():
    from gradwatch.diagnose._flow import crossed_decay

    # 4 counted steps at 0.4 (×0.0256), 10 layers crossed: 0.4^10 ≈ 1e-4, measured 2e-4
    assert crossed_decay(0.0256, 0.4, 10, 2e-4) == pytest.approx(2e-4)
    assert crossed_decay(0.0256, 0.4, 10, 1e-6) == pytest.approx(0.4**10)
    # an end-to-end ratio above the counted total (a pool that grows nothing): total stands
    assert crossed_decay(0.0256, 0.4, 10, 0.5) == 0.0256
    # a factor of 1 or more, or nothing measured end to end: total stands
    assert crossed_decay(3.0, 1.2, 10, 1e-3) == 3.0
    assert crossed_decay(0.5, 0.9, 10, math.nan) == 0.5


def test_default_init_vgg_vanishes_across_its_pools():
    torch.manual_seed(0)
    cu, fs = _check(vgg(he=False))
    # the premise: few same-shape steps, whose decay alone stays above the warning line
    assert (fs.counted, fs.depth) == (3, 9)
    assert VANISHING_RATIO_WITH_FACTOR < fs.total < 0.1 and fs.factor < 0.5
    end_to_end = fs.bp[0] / fs.bp[-1]
    assert end_to_end < VANISHING_RATIO
    assert fs.vanishing_ratio == pytest.approx(max(fs.factor**9, end_to_end))
    (f,) = [f for f in cu.findings if f.kind == "vanishing"]
    assert (cu.verdict, f.severity) == ("vanishing", "error")
    assert f.evidence["crossed_decay"] == pytest.approx(fs.vanishing_ratio, rel=1e-5)
    assert "over all 9 layers crossed" in f.message and "he_init" in f.remedies


@pytest.mark.parametrize("pool", [nn.MaxPool2d, nn.AvgPool2d])
def test_he_init_vgg_stays_healthy_whatever_its_pools(pool):
    torch.manual_seed(0)
    cu, fs = _check(vgg(he=True, pool=pool))
    end_to_end = fs.bp[0] / fs.bp[-1]
    if pool is nn.MaxPool2d:  # a max pool passes δ on unchanged: end to end as counted
        assert end_to_end > fs.total and fs.vanishing_ratio == fs.total
    else:  # 5 average pools halve ‖δ‖ each: that factor is not read beyond the layers'
        assert end_to_end < VANISHING_RATIO_WITH_FACTOR
        assert fs.vanishing_ratio == pytest.approx(max(fs.factor**fs.depth, end_to_end))
    assert fs.vanishing_ratio > VANISHING_RATIO_WITH_FACTOR
    assert cu.verdict == "healthy" and not [f for f in cu.findings if f.kind == "vanishing"]
