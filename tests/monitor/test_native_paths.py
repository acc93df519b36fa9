"""The Monitor records the same numbers on its compiled path and on its Python path.

Slow: the kernels are built first (about a minute of one core where they are not built yet).
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

import gradwatch as gw
from gradwatch.monitor.hookkit import RepeatPlan
from gradwatch.stats import native

from .oracle import brute_force_step

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def nat():
    mod = native.build()
    if mod is None:
        pytest.skip("no C++ compiler here: the compiled kernels cannot be built")
    return mod


class Net(nn.Module):
    """Convolutions with pooling, a shared layer called twice, and an MLP head."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.r1 = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(8 * 4 * 4, 32)
        self.t = nn.Tanh()
        self.shared = nn.Linear(32, 32)
        self.s = nn.Sigmoid()
        self.head = nn.Linear(32, 5)

    def forward(self, x):
        h = self.t(self.fc(self.pool(self.r1(self.conv(x))).flatten(1)))
        h = self.s(self.shared(self.t(self.shared(h))))
        return self.head(h)


def run(model, monkeypatch, enabled: bool, steps: int = 4, clip: bool = False,
        detail_every: int = 2):
    monkeypatch.setenv(native.ENV, "1" if enabled else "0")
    torch.manual_seed(1)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    with gw.watch(model, optimizer=opt, detail_every=detail_every) as mon:
        for _ in range(steps):
            opt.zero_grad()
            x = torch.randn(6, 3, 8, 8)
            loss = nn.functional.cross_entropy(model(x), torch.randint(0, 5, (6,)))
            loss.backward()
            if clip and mon.step_count % 2:  # in place, between backward and the pass
                nn.utils.clip_grad_norm_(model.parameters(), 0.05)
            opt.step()
            mon.step(loss)
            if clip and mon.step_count == 2:  # weights changed outside the optimizer's step
                with torch.no_grad():
                    model.fc.weight.data.mul_(0.9)  # no new version: other bits
                    model.head.bias.add_(0.1)  # a new version
        taps = mon._ctx.taps
        used = (bool((taps["backprop"].sq_step >= 0).any()),  # the C++ hooks wrote
                taps["update"].flat is not None, taps["grad"].native,
                bool(taps["grad"].hooked))  # the gradients read in backward
    return mon.run.stats.sort_values(["step", "layer", "stat"]).reset_index(drop=True), used


@pytest.mark.parametrize(("clip", "detail_every"), [(False, 2), (True, 2), (True, 1)])
def test_compiled_and_python_paths_record_the_same(nat, monkeypatch, clip, detail_every):
    torch.manual_seed(0)
    base = Net()
    fast, used = run(copy.deepcopy(base), monkeypatch, True, clip=clip,
                     detail_every=detail_every, steps=5)
    slow, _ = run(copy.deepcopy(base), monkeypatch, False, clip=clip,
                  detail_every=detail_every, steps=5)
    assert all(used), used  # the compiled kernels took the gradients, weights and hooks
    assert list(fast[["step", "layer", "stat"]].itertuples(index=False)) == list(
        slow[["step", "layer", "stat"]].itertuples(index=False))
    np.testing.assert_allclose(fast.value, slow.value, rtol=2e-5, atol=1e-7)
    assert {"backprop_norm", "dead_frac", "saturated_frac", "update_ratio"} <= set(fast.stat)


@pytest.mark.parametrize("enabled", [True, False])
def test_each_path_equals_brute_force(nat, monkeypatch, enabled):
    monkeypatch.setenv(native.ENV, "1" if enabled else "0")
    torch.manual_seed(2)
    model = Net()
    x = torch.randn(4, 3, 8, 8)
    ref = brute_force_step(copy.deepcopy(model), lambda m: m(x).square().mean())
    with gw.watch(model, detail_every=1) as mon:
        model(x).square().mean().backward()
        mon.step()
    got = mon.run.stats.set_index(["layer", "stat"]).value
    for layer, r in ref.items():
        for stat in ("grad_norm", "grad_max_abs", "backprop_norm"):
            assert got[layer, stat] == pytest.approx(r[stat], rel=1e-5), (layer, stat)


def test_a_gradient_the_kernels_refuse_falls_back_once(nat, monkeypatch):
    monkeypatch.setenv(native.ENV, "1")
    model = nn.Linear(4, 3)
    with gw.watch(model, activations=False) as mon:
        for _ in range(2):
            model(torch.randn(2, 4)).sum().backward()
            model.weight.grad = model.weight.grad.t().contiguous().t()  # not contiguous
            mon.step()
            want = float(torch.cat([p.grad.reshape(-1) for p in model.parameters()]).norm())
            model.zero_grad()
        assert mon._ctx.taps["grad"].native is False
    gn = mon.run.pivot("grad_norm")["(root)"]
    assert gn.iloc[-1] == pytest.approx(want, rel=1e-6)


class TwoOut(nn.Module):
    """A layer with a real and a complex output: the C++ hook takes one, the Python hook the
    other; the layer's back-propagated norm pools both."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(4, 4))

    def forward(self, x):
        h = x @ self.w
        return h, torch.complex(h, 2 * h)


class Pair(nn.Module):
    def __init__(self):
        super().__init__()
        self.two = TwoOut()
        self.head = nn.Linear(4, 1)

    def forward(self, x):
        a, z = self.two(x)
        return self.head(a).square().mean() + z.abs().mean()


@pytest.mark.parametrize("enabled", [True, False])
def test_a_layer_with_outputs_on_both_hooks(nat, monkeypatch, enabled):
    monkeypatch.setenv(native.ENV, "1" if enabled else "0")
    torch.manual_seed(3)
    model, x = Pair(), torch.randn(5, 4)
    a, z = model.two(x)
    a.retain_grad()
    z.retain_grad()
    (model.head(a).square().mean() + z.abs().mean()).backward()
    want = float(torch.sqrt(a.grad.square().sum() + z.grad.abs().square().sum()))
    model.zero_grad()
    with gw.watch(model, detail_every=1) as mon:
        model(x).backward()
        mon.step()
    got = mon.run.pivot("backprop_norm")
    assert got["two"].iloc[0] == pytest.approx(want, rel=1e-5)


def test_a_repeated_pass_reuses_its_plan_and_a_changed_one_does_not(nat, monkeypatch):
    """Steps whose pass repeats the last one take its per-row plan; a new batch size or an
    activation changed in place does not: every step's statistics equal their definitions."""
    monkeypatch.setenv(native.ENV, "1")
    torch.manual_seed(4)
    model = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 16), nn.ReLU(),
                          nn.Linear(16, 3))
    acts: dict[tuple[int, int], torch.Tensor] = {}
    step = [0]
    for i in (1, 3):
        model[i].register_forward_hook(
            lambda m, a, o, i=i: acts.__setitem__((step[0], i), o.detach().double().clone()))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    batches = [8, 8, 8, 5, 5, 8]
    with gw.watch(model, optimizer=opt, detail_every=1) as mon:
        matched = []

        class Spy(RepeatPlan):
            def match(self, pend, detail):
                got = super().match(pend, detail)
                matched.append(got is not None)
                return got

        mon._ctx.tap("act").repeat = Spy()
        for step[0], n in enumerate(batches):
            opt.zero_grad()
            loss = model(torch.randn(n, 6)).square().mean()
            loss.backward()
            opt.step()
            mon.step(loss)
    assert matched == [False, True, True, False, True, False]
    df = mon.run.stats
    for (s, i), a in acts.items():
        got = df[(df.step == s) & (df.layer == str(i - 1))].set_index("stat").value
        assert got["act_mean"] == pytest.approx(float(a.mean()), rel=1e-5, abs=1e-7)
        assert got["act_std"] == pytest.approx(float(a.std(unbiased=False)), rel=1e-4)
        if i == 3:
            assert got["dead_frac"] == pytest.approx(float((a.amax(0) <= 0).double().mean()))


def test_the_gradients_are_read_in_backward_only_outside_torch_distributed(nat, monkeypatch,
                                                                          tmp_path):
    """A collective may write gradients without a new version: the pass then reads them all."""
    import torch.distributed as dist

    monkeypatch.setenv(native.ENV, "1")
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.randn(5, 8)
    with gw.watch(model, optimizer=opt) as mon:
        tap = mon._ctx.taps["grad"]
        assert tap.hooked
        dist.init_process_group("gloo", init_method=f"file://{tmp_path}/pg", rank=0,
                                world_size=1)
        try:
            for _ in range(2):
                opt.zero_grad()
                model(x).square().mean().backward()
                want = [float(p.grad.norm()) for p in model.parameters()]
                opt.step()
                mon.step()
            assert not tap.hooked  # let go at the first step after the group was made
        finally:
            dist.destroy_process_group()
    got = mon.run.stats.query("stat == 'grad_norm' and step == 1").value.to_numpy()
    w = [(want[0] ** 2 + want[1] ** 2) ** 0.5, (want[2] ** 2 + want[3] ** 2) ** 0.5]
    np.testing.assert_allclose(got, w, rtol=1e-5)
