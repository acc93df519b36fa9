"""The held-out zoo's measurement helpers against closed forms and independent autograd.

The held-out truth is only as good as these figures: the flow along a trunk, the flow through
time, dead and saturated units, the training run that must be the runner's own.
"""

import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from benchmarks.zoo.heldout import BY_NAME, CASES, PROBES
from benchmarks.zoo.heldout.measure import Probe, measure, modules_of, summarise, train_plain
from benchmarks.zoo.heldout.seqnets import LRU
from benchmarks.zoo.heldout.truth import WIDTH_DEPENDENT, drift
from torch import nn


def _scaled_chain(scales):
    layers = []
    for c in scales:
        lin = nn.Linear(4, 4, bias=False)
        with torch.no_grad():
            lin.weight.copy_(c * torch.eye(4))
        layers.append(lin)
    return nn.Sequential(*layers)


def _half_sq(out, _target):
    return 0.5 * out.pow(2).sum()


def test_trunk_flow_of_a_scaled_chain_is_the_product_of_the_scales():
    # h_k = c^k x and L = ½‖h_L‖²: ∂L/∂h_k = c^(L-k) h_L, so ‖δ_1‖/‖δ_L‖ = c^(L-1) exactly
    model = _scaled_chain([0.125] * 30)  # a power of 2: exact in float32
    x = torch.randn(3, 4)
    m = measure(model, x, None, _half_sq, Probe(trunk=modules_of((nn.Linear,))))
    s = summarise(m)
    assert s["trunk_len"] == 30
    assert s["trunk_ratio"] == pytest.approx(0.125**29, rel=1e-9)  # 2^-87: fine in float64
    assert s["trunk_factor"] == pytest.approx(0.125, rel=1e-9)
    assert s["fwd_growth"] == pytest.approx(0.125**29, rel=1e-9)
    assert m["trunk"][0]["grad_norm"] < m["trunk"][-1]["grad_norm"]


def test_trunk_flow_matches_autograd_grad_on_each_hidden_output():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 7), nn.Tanh(), nn.Linear(7, 3))
    x, y = torch.randn(6, 5), torch.randint(0, 3, (6,))
    m = measure(model, x, y, None, Probe(trunk=modules_of((nn.Tanh,))))
    # independent: build the hidden outputs by hand and ask autograd.grad for ∂L/∂h
    md = model.double()
    h1 = md[1](md[0](x.double()))
    h2 = md[3](md[2](h1))
    loss = nn.functional.cross_entropy(md[4](h2), y)
    g1, g2 = torch.autograd.grad(loss, [h1, h2])
    assert m["trunk"][0]["grad_norm"] == pytest.approx(float(g1.norm()), rel=1e-10)
    assert m["trunk"][1]["grad_norm"] == pytest.approx(float(g2.norm()), rel=1e-10)
    assert m["loss"] == pytest.approx(float(loss.detach()), rel=1e-10)
    w = md[0].weight
    (gw,) = torch.autograd.grad(nn.functional.cross_entropy(md(x.double()), y), [w])
    want = float(gw.norm() / w.detach().norm())
    assert m["grad_weight_ratio"]["0.weight"] == pytest.approx(want, rel=1e-10)


class _Decay(nn.Module):
    """h_t = λ h_{t-1} + x_t, output h_T: ∂(Σ h_T)/∂x_t = λ^(T-1-t) for every feature."""

    def __init__(self, lam):
        super().__init__()
        self.lam = lam
        self.w = nn.Parameter(torch.ones(1))

    def forward(self, x):  # (N, T, F) -> (N, F)
        h = torch.zeros_like(x[:, 0])
        for t in range(x.shape[1]):
            h = self.lam * h + x[:, t]
        return h * self.w


def test_time_flow_is_the_closed_form_decay_and_does_not_underflow():
    lam, steps = 0.5, 200
    x = torch.randn(2, steps, 3)
    m = measure(_Decay(lam), x, None, lambda out, _t: out.sum(),
                Probe(trunk=lambda _m: [], time_at="", time_dim=1))
    g = np.array(m["time_grad"])
    want = lam ** np.arange(steps - 1, -1, -1) * math.sqrt(2 * 3)
    np.testing.assert_allclose(g, want, rtol=1e-12)
    s = summarise(m)
    assert s["time_ratio"] == pytest.approx(lam ** (steps - 1), rel=1e-12)  # 1.6e-60 > 0
    # 1e-4 of the largest is reached after ⌈log(1e-4)/log(λ)⌉ = 14 steps back
    assert s["time_reach"] == 14


def test_dead_and_saturated_units_are_counted_per_unit():
    conv = nn.Conv2d(1, 4, 3, padding=1)
    with torch.no_grad():
        conv.bias[:] = torch.tensor([-1e3, 0.0, 0.0, -1e3])
    model = nn.Sequential(conv, nn.ReLU(), nn.Flatten(), nn.LazyLinear(3))
    x = torch.randn(5, 1, 6, 6)
    model(x)
    m = measure(model, x, torch.zeros(5, dtype=torch.long), None, Probe(trunk=lambda _m: []))
    assert m["dead"] == {"1": pytest.approx(0.5)}  # two channels of four never fire
    lin = nn.Linear(10, 100)
    with torch.no_grad():
        lin.weight.mul_(1e3)
    m = measure(nn.Sequential(lin, nn.Tanh(), nn.Linear(100, 2)), torch.randn(50, 10),
                torch.zeros(50, dtype=torch.long), None, Probe(trunk=lambda _m: []))
    assert m["saturated"]["1"] > 0.95
    assert summarise(m)["saturated_max"] == m["saturated"]["1"]


def test_lru_convolution_equals_its_recurrence():
    torch.manual_seed(0)
    lru = LRU(4, 3, 0.4, 0.65).double()
    x = torch.randn(2, 12, 4, dtype=torch.float64)
    mag = lru.magnitudes()
    assert bool(((mag >= 0.4 - 1e-9) & (mag <= 0.65 + 1e-9)).all())
    lam = torch.polar(mag, torch.exp(lru.theta_log))
    b = torch.complex(lru.b_re, lru.b_im) * torch.sqrt(1 - mag**2)[:, None]
    c = torch.complex(lru.c_re, lru.c_im)
    h = torch.zeros(2, 3, dtype=lam.dtype)
    ys = []
    for t in range(12):
        h = lam * h + x[:, t].to(b.dtype) @ b.T
        ys.append((h @ c.T).real + lru.d * x[:, t])
    torch.testing.assert_close(lru(x), torch.stack(ys, 1), rtol=1e-10, atol=1e-12)


def test_training_run_is_the_runners_own():
    # the truth's training run (no monitor) and the zoo runner's watched run give one curve
    from benchmarks.zoo import BY_NAME as DEV
    from benchmarks.zoo.run import train_watched

    dev = DEV["setup_adam_digits"]
    case = replace(dev, train=replace(dev.train, steps=20))
    _, plain = train_plain(case)
    watched = train_watched(case)
    assert plain["loss_start"] == pytest.approx(watched["loss_start"], rel=1e-6)
    assert plain["loss_end"] == pytest.approx(watched["loss_end"], rel=1e-6)
    assert plain["outcome"] == watched["outcome"]
    assert plain["move"] and all(v >= 0 for v in plain["move"].values())


def test_drift_flags_figures_that_moved():
    row = {"recorded": {"init.trunk_ratio": 1e-40, "train.move_first": 0.5,
                        "init.loss": 2.3},
           "init": {"trunk_ratio": 3e-40, "loss": 2.31}, "train": {"move_first": 0.9}}
    assert drift(row) == {"train.move_first": (0.5, 0.9)}  # 3e-40 vs 1e-40: within half a decade
    row["init"]["trunk_ratio"] = 1e-30
    assert set(drift(row)) == {"init.trunk_ratio", "train.move_first"}


def test_width_dependent_figures_are_compared_within_a_decade():
    # each listed figure is one a case records, and its AVX2 value reproduces it within a decade
    for name, figures in WIDTH_DEPENDENT.items():
        for key, avx2 in figures.items():
            rec = BY_NAME[name].measured[key]
            section, stat = key.split(".")
            row = {"name": name, "recorded": {key: rec}, section: {stat: avx2}}
            assert drift(row) == {}, (name, key)
            assert drift({**row, "name": "another"}), (name, key)  # beyond same()'s tolerance
            row[section][stat] = rec * 10 ** 1.2 if avx2 >= rec else rec / 10 ** 1.2
            assert set(drift(row)) == {key}, (name, key)


def test_heldout_set_is_what_it_promises():
    from benchmarks.zoo import BY_NAME as DEV
    from benchmarks.zoo import CASES as DEV_CASES

    assert len(CASES) >= 30
    assert not set(BY_NAME) & set(DEV)
    assert not {c.family for c in CASES} & {c.family for c in DEV_CASES}
    assert set(PROBES) == set(BY_NAME)
    for c in CASES:
        assert c.source.strip() and c.measured, c.name  # the figures behind the truth
    truths = {c.expect_init for c in CASES} | {c.expect_run for c in CASES}
    assert {"healthy", "vanishing", "exploding", "nonfinite", "dead", "saturated"} <= truths
    healthy = [c for c in CASES if c.expect_init == c.expect_run == "healthy"]
    assert all(c.train.outcome == "trains" for c in healthy)
