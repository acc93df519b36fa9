"""update_rms, eps_frac, logit_max and logsumexp_mean against brute-force computations.

Adam's statistics are checked against what the optimizer did to the weights (the applied
update divided by the learning rate) and, for the first step, against the closed form
u = g / (|g| + ε) (m̂ = g and v̂ = g² after one step); the logit statistics against a plain
float64 logsumexp.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from gradwatch.stats.adam import adam_block, decode_adam, is_adam
from gradwatch.stats.logits import decode_logits, logit_row, merge_rows, output_logits


def layout(model):
    params, layer_params = [], {}
    for li, m in enumerate(m for m in model.modules() if list(m.parameters(False))):
        layer_params[li] = []
        for p in m.parameters(False):
            layer_params[li].append(len(params))
            params.append(p)
    return params, SimpleNamespace(layer_params=layer_params,
                                   numel=np.array([p.numel() for p in params]), loss_layer=99)


def adam_stats(opt, model):
    params, lay = layout(model)
    block, pids = adam_block(opt, params)
    return decode_adam(block.numpy()[None], pids, lay)


@pytest.mark.parametrize("cls", [torch.optim.Adam, torch.optim.AdamW])
@pytest.mark.parametrize("impl", [{}, {"foreach": False}, {"amsgrad": True}])
def test_update_rms_is_the_applied_update_over_lr(cls, impl):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3))
    opt = cls(model.parameters(), lr=0.01, weight_decay=0.0, **impl)
    x, y = torch.randn(16, 5), torch.randn(16, 3)
    for _ in range(4):  # several steps: the bias corrections matter
        before = [p.detach().clone() for p in model.parameters()]
        opt.zero_grad()
        ((model(x) - y) ** 2).mean().backward()
        opt.step()
    out = adam_stats(opt, model)
    layers, rms = out["update_rms"]
    assert layers == [0, 1]
    after = list(model.parameters())
    for j, ps in enumerate(([0, 1], [2, 3])):
        du = torch.cat([(before[i] - after[i].detach()).flatten() for i in ps]).double() / 0.01
        assert rms[0, j] == pytest.approx(float(du.square().mean().sqrt()), rel=1e-4)


def test_first_step_closed_form_and_eps_fraction():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(20, 30))
    eps = 1e-3
    opt = torch.optim.Adam(model.parameters(), lr=0.1, eps=eps)
    x = torch.randn(8, 20) * 0.05
    (model(x).sum() * 1e-2).backward()
    g = torch.cat([p.grad.flatten() for p in model.parameters()]).double()
    opt.step()
    out = adam_stats(opt, model)
    u = g / (g.abs() + eps)  # m̂ = g, v̂ = g² after one step
    assert out["update_rms"][1][0, 0] == pytest.approx(float(u.square().mean().sqrt()), rel=1e-4)
    frac = float((g.abs() <= eps).double().mean())
    assert 0.05 < frac < 0.95  # the test separates the two regimes
    assert out["eps_frac"][1][0, 0] == pytest.approx(frac)


def test_only_adam_family_and_stepped_parameters():
    model = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 3))
    assert is_adam(torch.optim.AdamW(model.parameters()))
    assert not is_adam(torch.optim.SGD(model.parameters(), lr=0.1))
    opt = torch.optim.Adam(model.parameters())
    params, _ = layout(model)
    assert adam_block(opt, params) is None  # no step yet: no state
    model[1](torch.randn(2, 3)).sum().backward()  # only the second layer gets gradients
    opt.step()
    out = adam_stats(opt, model)
    assert out["update_rms"][0] == [1]


def test_logit_statistics_brute_force():
    torch.manual_seed(0)
    z = torch.randn(4, 6, 11) * 7
    row = logit_row(z)
    lse = torch.logsumexp(z.double(), -1)
    assert row.tolist() == pytest.approx([float(z.max()), float(lse.sum()), 24.0], rel=1e-6)
    # the class dimension of F.cross_entropy's (N, C, T) layout
    row1 = logit_row(z, dim=1)
    assert row1[1].item() == pytest.approx(float(torch.logsumexp(z.double(), 1).sum()), rel=1e-6)
    # two forward passes in a step (micro-batches): pooled over positions
    both = merge_rows([row, logit_row(z[:2] - 50)])
    out = decode_logits(both.numpy()[None], (), SimpleNamespace(loss_layer=5))
    pooled = torch.cat([lse.flatten(), torch.logsumexp(z[:2].double() - 50, -1).flatten()])
    assert out["logit_max"][0] == [5]
    assert out["logit_max"][1][0, 0] == pytest.approx(float(z.max()), rel=1e-6)
    assert out["logsumexp_mean"][1][0, 0] == pytest.approx(float(pooled.mean()), rel=1e-5)


def test_output_logits_of_the_usual_outputs():
    t = torch.randn(2, 3)
    assert output_logits(t) is t
    assert output_logits({"logits": t, "loss": torch.tensor(1.0)}) is t
    assert output_logits(SimpleNamespace(logits=t)) is t
    assert output_logits((t, torch.randn(1))) is t
    assert output_logits(torch.arange(3)) is None
    assert output_logits("text") is None
    assert math.isnan(decode_logits(np.array([[-np.inf, 0.0, 0.0]]), (),
                                    SimpleNamespace(loss_layer=0))["logit_max"][1][0, 0])
