"""The tap interface: what a source of statistics can do, checked on real training steps."""

from __future__ import annotations

import contextlib
import copy
import math
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import gradwatch as gw
from gradwatch.monitor import Monitor
from gradwatch.monitor.tap import TAPS, Record, StepPlan, Tap
from gradwatch.stats import DEFAULT_STATS, SOURCES, STATISTICS

from .oracle import brute_force_step

SRC = Path(__file__).resolve().parents[2] / "src" / "gradwatch"


@contextlib.contextmanager
def extra_tap(cls: type[Tap]):
    """Make every Monitor created inside the block call ``cls`` too."""
    TAPS.append(cls)
    try:
        yield
    finally:
        TAPS.remove(cls)


def mlp(width: int = 6, depth: int = 3) -> nn.Sequential:
    torch.manual_seed(0)
    mods: list[nn.Module] = []
    for _ in range(depth):
        mods += [nn.Linear(width, width), nn.Tanh()]
    return nn.Sequential(*mods[:-1])


def train(model, mon_kwargs, steps=4, opt=None, sched=None):
    opt = opt or torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.randn(5, model[0].in_features)
    with gw.watch(model, optimizer=opt, **mon_kwargs) as mon:
        for _ in range(steps):
            opt.zero_grad()
            loss = model(x).square().mean()
            loss.backward()
            opt.step()
            if sched is not None:
                sched.step()
            mon.step(loss)
    return mon


def test_the_monitor_is_composed_of_taps_in_small_files():
    assert Monitor.__bases__ == (object,)  # no mixin: the taps hold the state
    assert len((SRC / "monitor" / "__init__.py").read_text().splitlines()) <= 300
    for path in (SRC / "monitor" / "taps").glob("*.py"):
        assert len(path.read_text().splitlines()) <= 300, path.name
    for path in SRC.rglob("*.py"):
        assert len(path.read_text().splitlines()) <= 500, path
    names = [t.name for t in TAPS]
    assert len(names) == len(set(names))
    produced = {s for t in TAPS for s in t.sources}
    assert set(SOURCES) <= produced  # every registry source has a tap that produces it


def test_learning_rate_tap_records_the_rate_each_step_used():
    model = mlp()
    opt = torch.optim.SGD([
        {"params": model[0].parameters(), "lr": 0.5},
        {"params": [model[2].weight], "lr": 0.1},
        {"params": [model[2].bias], "lr": 0.3},  # one layer in two groups: the largest
    ])  # model[4] is not optimized: no lr
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    mon = train(model, {"stats": ["grad_norm", "lr"]}, steps=3, opt=opt, sched=sched)
    lr = mon.run.pivot("lr")
    assert list(lr.columns) == ["0", "2"]
    for step in range(3):
        assert lr.loc[step, "0"] == pytest.approx(0.5 * 0.5**step)
        assert lr.loc[step, "2"] == pytest.approx(0.3 * 0.5**step)
    # opt-in: the default records everything else, and no lr
    assert "lr" not in DEFAULT_STATS and not STATISTICS["lr"].default
    plain = train(mlp(), {}, steps=1)
    assert "lr" not in set(plain.run.stats.stat)


def test_a_tap_reads_the_backpropagated_gradients_through_a_listener():
    model = mlp(5, 3)
    twin = copy.deepcopy(model)  # the reference pass runs on a copy nobody watches
    seen: dict[int, list[float]] = {}

    class Probe(Tap):
        name, sources = "probe", ()

        def install(self):
            bp = self.ctx.tap("backprop")
            bp.listen(lambda li, g: seen.setdefault(li, []).append(float(g.double().norm())),
                      when=lambda plan: plan.recorded and plan.step == 1)

    x = torch.randn(4, 5)
    with extra_tap(Probe):
        # backprop_norm itself is not asked for: the listener still gets the gradients
        with gw.watch(model, stats=["grad_norm"]) as mon:
            for step in range(3):
                if step == 1:
                    ref = brute_force_step(twin, lambda m: m(x).square().sum())
                model(x).square().sum().backward()
                mon.step()
                model.zero_grad()
    names = [ly.name for ly in mon.layers]
    assert sorted(seen) == [0, 1, 2]  # only at step 1, once per layer
    for li, norms in seen.items():
        assert norms == [pytest.approx(ref[names[li]]["backprop_norm"], rel=1e-6)]
    assert "backprop_norm" not in set(mon.run.stats.stat)


def test_a_request_on_the_gradient_pass_leaves_the_record_unchanged():
    got = {}

    class MaxReader(Tap):
        name, sources = "maxreader", ()

        def begin_step(self, plan: StepPlan):
            plan.requests.add("grad_max")  # max |g| at every recorded step, for this tap

        def on_gradients(self, gp):
            got[self.ctx.plan.step] = gp.max_abs.clone()

    model = mlp()
    with extra_tap(MaxReader):
        mon = train(model, {"detail_every": 3}, steps=4)
    params = list(model.parameters())
    assert sorted(got) == [0, 1, 2, 3] and all(len(v) == len(params) for v in got.values())
    # the statistic still follows its tier: detail steps 0 and 3 only
    assert sorted(mon.run.pivot("grad_max_abs").index) == [0, 3]
    assert sorted(mon.run.pivot("grad_norm").index) == [0, 1, 2, 3]


def test_events_reach_a_tap_in_order_with_the_schedule():
    calls: list[tuple] = []

    class Spy(Tap):
        name, sources = "spy", ()

        def begin_step(self, plan):
            calls.append(("begin", plan.step, plan.recorded, plan.detail))

        def on_forward(self, args, kwargs):
            calls.append(("forward",))

        def on_forward_done(self, args, out):
            calls.append(("forward_done", tuple(out.shape)))

        def on_gradients(self, gp):
            calls.append(("gradients", len(gp.grads)))

        def before_optimizer_step(self):
            calls.append(("before_opt",))

        def after_optimizer_step(self):
            calls.append(("after_opt",))

        def on_loss(self, value, step):
            calls.append(("loss", step))

        def collect(self, rec: Record):
            calls.append(("collect", rec.step, rec.detail))

    with extra_tap(Spy):
        train(mlp(), {"every": 2, "detail_every": 2}, steps=3)
    assert calls == [
        ("begin", 0, True, True),
        ("forward",), ("forward_done", (5, 6)), ("gradients", 6), ("before_opt",),
        ("after_opt",), ("collect", 0, True), ("begin", 1, False, False), ("loss", 0),
        ("forward",), ("forward_done", (5, 6)), ("begin", 2, True, False),  # not recorded
        ("forward",), ("forward_done", (5, 6)), ("gradients", 6), ("before_opt",),
        ("after_opt",), ("collect", 2, False), ("begin", 3, False, False), ("loss", 2),
    ]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_one_bucketed_collective_per_recorded_step_and_none_between(tmp_path):
    worker = Path(__file__).with_name("bucket_worker.py")
    port = str(free_port())
    procs = [
        subprocess.Popen([sys.executable, str(worker), str(r), "2", port, str(tmp_path / "run")],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for r in range(2)
    ]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    run = gw.load(tmp_path / "run")
    # every=2 over 5 steps: steps 0, 2, 4 recorded; ranks hold 1.0 and 2.0
    loss = run.pivot("loss")[""]
    assert list(loss.index) == [0, 2, 4] and list(loss) == [3.0, 3.0, 3.0]  # sum
    assert list(run.pivot("clip_norm")[""]) == [2.0] * 3  # max
    assert list(run.pivot("clip_coef")[""]) == [1.0] * 3  # min
    assert all("collectives per step [1, 0, 1, 0, 1]" in o for o in outs), outs
    assert math.isfinite(float(run.pivot("grad_norm").iloc[0, 0]))
