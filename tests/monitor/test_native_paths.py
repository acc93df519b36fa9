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


def run(model, monkeypatch, enabled: bool, steps: int = 4):
    monkeypatch.setenv(native.ENV, "1" if enabled else "0")
    torch.manual_seed(1)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    with gw.watch(model, optimizer=opt, detail_every=2) as mon:
        for _ in range(steps):
            opt.zero_grad()
            x = torch.randn(6, 3, 8, 8)
            loss = nn.functional.cross_entropy(model(x), torch.randint(0, 5, (6,)))
            loss.backward()
            opt.step()
            mon.step(loss)
        taps = mon._ctx.taps
        used = (bool((taps["backprop"].sq_step >= 0).any()),  # the C++ hooks wrote
                taps["update"].flat is not None, taps["grad"].native)
    return mon.run.stats.sort_values(["step", "layer", "stat"]).reset_index(drop=True), used


def test_compiled_and_python_paths_record_the_same(nat, monkeypatch):
    torch.manual_seed(0)
    base = Net()
    fast, used = run(copy.deepcopy(base), monkeypatch, True)
    slow, _ = run(copy.deepcopy(base), monkeypatch, False)
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
        tap = mon._ctx.tap("act")
        compiled_repeat = tap.compiled.repeat

        def spy_repeat(pend, detail, buf):  # whether the learnt compiled plan took the step
            got = compiled_repeat(pend, detail, buf)
            matched.append(got)
            return got

        tap.compiled.repeat = spy_repeat
        for step[0], n in enumerate(batches):
            opt.zero_grad()
            loss = model(torch.randn(n, 6)).square().mean()
            loss.backward()
            opt.step()
            mon.step(loss)
    # nothing learnt before step 0; batch 5 at step 3 is a new pass (learnt), 8 at 5 again
    assert matched == [False, True, True, False, True, False]
    df = mon.run.stats
    for (s, i), a in acts.items():
        got = df[(df.step == s) & (df.layer == str(i - 1))].set_index("stat").value
        assert got["act_mean"] == pytest.approx(float(a.mean()), rel=1e-5, abs=1e-7)
        assert got["act_std"] == pytest.approx(float(a.std(unbiased=False)), rel=1e-4)
        if i == 3:
            assert got["dead_frac"] == pytest.approx(float((a.amax(0) <= 0).double().mean()))


@pytest.mark.parametrize("enabled", [True, False])
def test_writes_through_data_between_backward_and_step_are_recorded(nat, monkeypatch, enabled):
    """Gradients clamped through ``.data`` (the DQN idiom) and weights clamped through ``.data``
    after the step (WGAN's clipping) change no version counter: each recorded statistic is
    still the one the optimizer sees -- the gradient after the clamp, the update from the
    clamped weights."""
    monkeypatch.setenv(native.ENV, "1" if enabled else "0")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 10))
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    grads, updates = [], []
    with gw.watch(model, optimizer=opt, detail_every=1) as mon:
        for step in range(4):
            x = torch.randn(32, 64)
            x[:, 37] *= 1e4  # one input feature on a huge scale: one huge gradient column
            loss = nn.functional.cross_entropy(model(x), torch.randint(0, 10, (32,)))
            opt.zero_grad()
            loss.backward()
            for p in model.parameters():
                p.grad.data.clamp_(-1, 1)  # cuts that column only
            w, b = model[0].weight, model[0].bias
            grads.append(float(torch.cat([w.grad.flatten(), b.grad.flatten()]).norm()))
            before = torch.cat([w.detach().flatten(), b.detach().flatten()]).clone()
            opt.step()
            after = torch.cat([w.detach().flatten(), b.detach().flatten()])
            updates.append(float((after - before).norm() / before.norm()))
            model[0].weight.data[3 + step, 41].clamp_(-1e-3, 1e-3)  # one more weight clipped
    stats = mon.run.stats
    first = stats[stats.layer == "0"].set_index(["step", "stat"]).value
    np.testing.assert_allclose([first[s, "grad_norm"] for s in range(4)], grads, rtol=1e-5)
    np.testing.assert_allclose([first[s, "update_ratio"] for s in range(4)], updates, rtol=1e-4)


class ScaledOnce(nn.Module):
    """Linear-GELU twice; at forward call ``when`` the first GELU's output is scaled in place."""

    def __init__(self, when: int):
        super().__init__()
        self.lins = nn.ModuleList(nn.Linear(8, 8) for _ in range(2))
        self.acts = nn.ModuleList(nn.GELU() for _ in range(2))
        self.when, self.calls = when, 0

    def forward(self, x):
        h = self.acts[0](self.lins[0](x))
        if self.calls == self.when:
            h.mul_(3.0)  # GELU keeps its input for backward: autograd allows it
        self.calls += 1
        return self.acts[1](self.lins[1](h))


def test_a_learnt_plan_refuses_an_activation_changed_in_place(nat):
    """Once the compiled plan is learnt, a step whose kept activation was changed in place
    does not take it: that row is not recorded at that step, and the others still are."""
    torch.manual_seed(5)
    model = ScaledOnce(when=3)
    seen = []
    model.acts[1].register_forward_hook(lambda m, a, o: seen.append(o.detach().double()))
    with gw.watch(model, detail_every=1) as mon:
        took = []
        tap = mon._ctx.tap("act")
        compiled_repeat = tap.compiled.repeat
        tap.compiled.repeat = lambda *a: took.append(compiled_repeat(*a)) or took[-1]
        for _ in range(6):
            loss = model(torch.randn(4, 8)).square().mean()
            loss.backward()
            mon.step(loss)
    # nothing learnt before step 0; step 3 changed in place; step 4 keeps one activation (the
    # other is reduced in its hook from then on): a new plan, taken at step 5
    assert took == [False, True, True, False, False, True]
    df = mon.run.stats
    mean0 = df[(df.layer == "lins.0") & (df.stat == "act_mean")].set_index("step")["value"]
    assert list(mean0.index) == [0, 1, 2, 4, 5]
    mean1 = df[(df.layer == "lins.1") & (df.stat == "act_mean")].set_index("step")["value"]
    assert list(mean1.index) == [0, 1, 2, 3, 4, 5]
    for s in range(6):
        assert mean1[s] == pytest.approx(float(seen[s].mean()), rel=1e-5, abs=1e-7)
