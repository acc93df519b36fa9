"""The stacked hot paths equal brute-force autograd.

Small same-shape activations are reduced together when the forward pass returns, same-shape
small parameters are stacked for their gradient norms, max |g| and the update snapshot. A
model with many repeated layers takes every one of these paths; each statistic is compared
with its definition computed from the tensors themselves.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import gradwatch as gw
from gradwatch.monitor.taps import activation as act_tap
from gradwatch.stats import native

WIDTH = 24


@pytest.fixture(autouse=True)
def torch_path(monkeypatch):
    """These are the torch path's stacked reductions (test_native_paths covers the compiled)."""
    monkeypatch.setenv(native.ENV, "0")


def recorded(run) -> dict[str, dict[str, float]]:
    df = run.stats
    return {
        layer: dict(zip(g["stat"], g["value"], strict=True)) for layer, g in df.groupby("layer")
    }


def deep_model() -> nn.Sequential:
    torch.manual_seed(3)
    mods: list[nn.Module] = [nn.Linear(5, WIDTH), nn.Tanh()]
    for act in (nn.Tanh, nn.Tanh, nn.ReLU, nn.ReLU, nn.ReLU, nn.Sigmoid, nn.Sigmoid, nn.Tanh):
        mods += [nn.Linear(WIDTH, WIDTH), act()]
    mods.append(nn.Linear(WIDTH, 3))
    model = nn.Sequential(*mods)
    with torch.no_grad():
        model[0].weight.mul_(4.0)  # tanh saturation
        model[6].bias[:6].fill_(-6.0)  # dead ReLU units
    return model


@pytest.mark.parametrize("pending_max,buffer_bytes", [(None, None), (2000, None), (None, 8000)])
def test_stacked_paths_equal_their_definitions(monkeypatch, pending_max, buffer_bytes):
    if pending_max is not None:  # kept activations are reduced mid-forward past this many
        monkeypatch.setattr(act_tap, "PENDING_MAX", pending_max)
    if buffer_bytes is not None:  # stacking buffers past this size: one activation at a time
        monkeypatch.setattr(act_tap, "STACK_BUFFER_BYTES", buffer_bytes)
    model = deep_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.2)
    x, y = torch.randn(40, 5), torch.randint(0, 3, (40,))
    act_idx = [i for i, m in enumerate(model) if not isinstance(m, nn.Linear)]
    acts: dict[int, torch.Tensor] = {}
    hooks = [model[i].register_forward_hook(
        lambda m, a, o, i=i: acts.__setitem__(i, o.detach().double().clone()))
        for i in act_idx]
    before = [p.detach().clone() for p in model.parameters()]
    with gw.watch(model, optimizer=opt, detail_every=1) as mon:
        acts_tap, grad_tap = mon._ctx.tap("act"), mon._ctx.tap("grad")
        peak = []  # elements kept by the Monitor after each activation ran
        spies = [model[i].register_forward_hook(
            lambda m, a, o: peak.append(acts_tap.pending_n)) for i in act_idx]
        opt.zero_grad()
        out = model(x)
        held = acts_tap.pending_n
        for h in spies:
            h.remove()
        loss = nn.functional.cross_entropy(out, y)
        loss.backward()
        grads = [p.grad.clone() for p in model.parameters()]
        opt.step()
        mon.step(loss)
        plan = grad_tap.plan
    for h in hooks:
        h.remove()
    assert plan is not None and plan.stacked, "the model must take the stacked gradient path"
    assert held == 0  # nothing kept past the forward pass
    one = 40 * WIDTH  # elements of one activation
    if pending_max is None:
        assert max(peak) == len(act_idx) * one  # all kept until the forward pass returns
    else:
        assert 0 < max(peak) <= pending_max + one  # reduced mid-forward past the bound
    got = recorded(mon.run)
    params = list(model.parameters())
    lin_idx = [i for i, m in enumerate(model) if isinstance(m, nn.Linear)]
    for k, li in enumerate(lin_idx):
        name = str(li)
        g = grads[2 * k: 2 * k + 2]
        norm = math.sqrt(sum(float((t.double() ** 2).sum()) for t in g))
        assert got[name]["grad_norm"] == pytest.approx(norm, rel=1e-5)
        assert got[name]["grad_max_abs"] == pytest.approx(max(float(t.abs().max()) for t in g))
        w, w0 = [p.detach() for p in params[2 * k: 2 * k + 2]], before[2 * k: 2 * k + 2]
        wn = math.sqrt(sum(float((t.double() ** 2).sum()) for t in w))
        dw = math.sqrt(sum(float(((a.double() - b.double()) ** 2).sum())
                           for a, b in zip(w, w0, strict=True)))
        assert got[name]["weight_norm"] == pytest.approx(wn, rel=1e-5)
        assert got[name]["update_ratio"] == pytest.approx(dw / wn, rel=1e-4)
    for i in act_idx:
        a, name, fam = acts[i], str(i - 1), type(model[i])
        assert got[name]["act_mean"] == pytest.approx(float(a.mean()), rel=1e-5, abs=1e-7)
        assert got[name]["act_std"] == pytest.approx(float(a.std(unbiased=False)), rel=1e-4)
        if fam is nn.Tanh:
            assert got[name]["saturated_frac"] == pytest.approx(float((a.abs() > 0.97).double()
                                                                      .mean()))
        elif fam is nn.Sigmoid:
            assert got[name]["saturated_frac"] == pytest.approx(
                float(((a < 0.03) | (a > 0.97)).double().mean()))
        else:
            assert got[name]["dead_frac"] == pytest.approx(float((a.amax(0) <= 0).double()
                                                                 .mean()))
    assert got["0"]["saturated_frac"] > 0.1
    assert got["6"]["dead_frac"] >= 6 / WIDTH


class InPlaceAfter(nn.Module):
    """Three GELU blocks; the first block's output is scaled in place after its GELU.

    GELU keeps its input for the backward pass, so autograd allows the in-place write.
    """

    def __init__(self):
        super().__init__()
        self.lins = nn.ModuleList(nn.Linear(WIDTH, WIDTH) for _ in range(3))
        self.acts = nn.ModuleList(nn.GELU() for _ in range(3))

    def forward(self, x):
        for k in range(3):
            x = self.acts[k](self.lins[k](x))
            if k == 0:
                x.mul_(3.0)
        return x


def test_an_activation_changed_in_place_is_skipped_once_then_taken_in_its_hook():
    torch.manual_seed(0)
    model = InPlaceAfter()
    x = torch.randn(16, WIDTH)
    seen = []
    h = model.acts[0].register_forward_hook(lambda m, a, o: seen.append(o.detach().double()
                                                                        .clone()))
    with gw.watch(model, detail_every=1) as mon:
        for _ in range(3):
            loss = model(x).square().mean()
            loss.backward()
            mon.step(loss)
    h.remove()
    df = mon.run.stats
    mean0 = df[(df.layer == "lins.0") & (df.stat == "act_mean")].set_index("step")["value"]
    assert list(mean0.index) == [1, 2]  # changed in place at step 0: not recorded then
    assert mean0[2] == pytest.approx(float(seen[2].mean()), rel=1e-5, abs=1e-7)  # before mul_
    mean1 = df[(df.layer == "lins.1") & (df.stat == "act_mean")].set_index("step")["value"]
    assert list(mean1.index) == [0, 1, 2]  # untouched: reduced with the others every step


def test_the_backprop_hook_keeps_hooks_the_user_hung_on_the_same_output():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 2))
    seen: dict[str, torch.Tensor] = {}

    def hang(key):
        def hook(m, a, o):
            if key == "after0":
                o.retain_grad()
                seen["out0"] = o
            o.register_hook(lambda g: seen.__setitem__(key, g.clone()))
        return hook

    model[0].register_forward_hook(hang("before0"))  # before gradwatch's: the public path
    with gw.watch(model, detail_every=1) as mon:
        model[0].register_forward_hook(hang("after0"))  # after: joins the dict it installed
        model[2].register_forward_hook(hang("after2"))
        loss = model(torch.randn(3, 4)).square().sum()
        loss.backward()
        mon.step(loss)
    bp = mon.run.stats.query("stat == 'backprop_norm'").set_index("layer")["value"]
    assert torch.equal(seen["before0"], seen["after0"])  # every hook on layer 0 ran
    assert torch.equal(seen["out0"].grad, seen["after0"])  # and retain_grad still works
    assert bp["0"] == pytest.approx(float(seen["before0"].norm()), rel=1e-6)
    assert bp["2"] == pytest.approx(float(seen["after2"].norm()), rel=1e-6)
