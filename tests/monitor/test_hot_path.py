"""The watch path's hot-path guarantees: memory, overflow, GradScaler, NaN origin, shapes."""

from __future__ import annotations

import gc
import math
import weakref

import numpy as np
import pytest
import torch
from torch import nn

import gradwatch as gw


def mlp(width: int = 8, depth: int = 3, act=nn.Tanh) -> nn.Sequential:
    mods: list[nn.Module] = []
    for _ in range(depth):
        mods += [nn.Linear(width, width), act()]
    return nn.Sequential(*mods[:-1])


#: What the Monitor refers to but does not hold for itself: the model and its parameters,
#: the weight snapshot (one copy of the weights, by design), the step's inputs, the writer.
NOT_HELD = {"model", "params", "snapshot", "inputs", "writer", "layers"}


def held_tensor_bytes(mon) -> int:
    """Bytes of every tensor reachable from the Monitor's own objects (its taps included)."""
    seen: set[int] = set()
    total = 0

    def visit(x, depth=0):
        nonlocal total
        if id(x) in seen:
            return
        seen.add(id(x))
        if isinstance(x, torch.Tensor):
            if x.device.type != "meta":
                total += x.untyped_storage().nbytes()
        elif depth < 8 and isinstance(x, list | tuple):
            for y in x:
                visit(y, depth + 1)
        elif depth < 8 and isinstance(x, dict):
            for y in x.values():
                visit(y, depth + 1)
        elif depth < 8 and hasattr(x, "__dict__") and type(x).__module__.startswith("gradwatch"):
            for name, y in vars(x).items():
                if name.lstrip("_") not in NOT_HELD:
                    visit(y, depth + 1)

    visit(mon)
    return total


@pytest.mark.parametrize("micro", [2, 16])
def test_no_activation_outlives_its_micro_batch(micro):
    torch.manual_seed(0)
    model = mlp(64, 4)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    outs: list[weakref.ref] = []
    keep = model[1].register_forward_hook(lambda m, a, o: outs.append(weakref.ref(o)))
    with gw.watch(model, optimizer=opt, detail_every=1) as mon:
        for _ in range(2):
            opt.zero_grad()
            for _ in range(micro):
                loss = model(torch.randn(32, 64)).square().mean() / micro
                loss.backward()
            del loss
            gc.collect()
            # every micro-batch's activations are gone before the optimizer step
            assert all(r() is None for r in outs)
            held = held_tensor_bytes(mon)
            opt.step()
    keep.remove()
    assert mon.run.pivot("act_mean").shape[0] == 2
    test_no_activation_outlives_its_micro_batch.held[micro] = held
    if len(test_no_activation_outlives_its_micro_batch.held) == 2:
        two, many = (test_no_activation_outlives_its_micro_batch.held[k] for k in (2, 16))
        assert many == two  # the Monitor's memory does not grow with micro-batches


test_no_activation_outlives_its_micro_batch.held = {}


def test_accumulated_statistics_cover_every_micro_batch():
    torch.manual_seed(1)
    model = mlp(6, 2, nn.ReLU)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    xs = [torch.randn(5, 6) for _ in range(3)]
    acts = []
    h = model[1].register_forward_hook(lambda m, a, o: acts.append(o.detach().double()))
    with gw.watch(model, optimizer=opt, detail_every=1) as mon:
        opt.zero_grad()
        for x in xs:
            model(x).sum().backward()
        opt.step()
    h.remove()
    got = mon.run.stats.set_index(["layer", "stat"]).value
    a = torch.cat(acts)
    assert got["0", "act_mean"] == pytest.approx(float(a.mean()), rel=1e-5)
    assert got["0", "act_std"] == pytest.approx(float(a.std(unbiased=False)), rel=1e-4)
    dead = sum(float((x.amax(0) <= 0).sum()) for x in acts) / (3 * 6)
    assert got["0", "dead_frac"] == pytest.approx(dead)


def test_finite_gradient_whose_norm_overflows_float32_is_recorded_finite():
    model = nn.Linear(4, 4)
    with gw.watch(model, activations=False, detail_every=1) as mon:
        model(torch.randn(2, 4)).sum().backward()
        model.weight.grad.fill_(1e20)  # finite; its square overflows float32
        model.bias.grad.fill_(1.0)
        mon.step()
    got = mon.run.stats.set_index(["layer", "stat"]).value
    want = math.sqrt(16 * 1e40 + 4)
    assert got["", "nonfinite"] == 0 if ("", "nonfinite") in got else True
    row = mon.run.stats[mon.run.stats.stat == "grad_norm"].value.iloc[0]
    assert np.isfinite(row) and row == pytest.approx(want, rel=1e-6)
    assert mon.run.stats[mon.run.stats.stat == "nonfinite"].value.iloc[0] == 0


def test_gradscaler_records_skipped_and_loss_scale_and_no_gradients_on_skips():
    torch.manual_seed(0)
    model = mlp(8, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    x = torch.randn(4, 8)
    with gw.watch(model, optimizer=opt, scaler=scaler, detail_every=1) as mon:
        for step in range(3):
            opt.zero_grad()
            loss = model(x).square().mean()
            scaler.scale(loss).backward()
            if step == 1:
                model[0].weight.grad[0, 0] = float("inf")
            scaler.step(opt)
            scaler.update()
            mon.step(loss)
    run = mon.run
    skipped = run.pivot("skipped")[""].tolist()
    scale = run.pivot("loss_scale")[""].tolist()
    assert skipped == [0.0, 1.0, 0.0]
    assert scale == [2.0**10, 2.0**10, 2.0**9]  # the scale each step's backward used
    for stat in ("grad_norm", "nonfinite", "backprop_norm", "update_ratio", "grad_max_abs"):
        assert sorted(run.pivot(stat).index) == [0, 2], stat
    assert sorted(run.pivot("loss").index) == [0, 1, 2]


class NaNForward(nn.Module):
    """A layer whose forward returns NaN (a broken custom op)."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(6, 6)

    def forward(self, x):
        return self.lin(x) * float("nan")


class _NaNBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, g):
        return g * float("nan")


class NaNBackward(nn.Module):
    """A layer whose forward is finite and whose backward makes NaN."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(6, 6)

    def forward(self, x):
        return _NaNBackward.apply(self.lin(x))


def origin_run(fault: str):
    torch.manual_seed(0)
    mid = NaNForward() if fault == "forward" else NaNBackward() if fault == "backward" else (
        nn.Linear(6, 6))
    model = nn.Sequential(nn.Linear(6, 6), nn.Tanh(), mid, nn.Tanh(), nn.Linear(6, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.randn(4, 6)
    with gw.watch(model, optimizer=opt, detail_every=100) as mon:
        for step in range(3):
            opt.zero_grad()
            xin = x.clone()
            if fault == "input" and step == 2:
                xin[1, 3] = float("nan")
            if fault == "weight" and step == 2:
                with torch.no_grad():
                    model[4].weight[0, 1] = float("inf")
            loss = model(xin).square().mean()
            loss.backward()
            opt.step()
            mon.step(loss)
    return mon.run


@pytest.mark.parametrize("fault", ["input", "weight", "forward", "backward"])
def test_the_origin_of_a_nan_is_named(fault):
    run = origin_run(fault)
    df = run.stats
    first_bad = int(df[(df.stat == "nonfinite") & (df.value > 0)].step.min())
    at = df[df.step == first_bad].set_index(["layer", "stat"]).value
    inp = at["", "input_nonfinite"]
    names = ("0", "2.lin", "2", "4")
    w = {ly: at[ly, "weight_nonfinite"] for ly in names if (ly, "weight_nonfinite") in at}
    fw = {ly: at[ly, "forward_nonfinite"] for ly in names if (ly, "forward_nonfinite") in at}
    lin = "2.lin" if fault in ("forward", "backward") else "2"
    if fault == "input":
        assert first_bad == 2 and inp == 1 and sum(w.values()) == 0
        assert fw["0"] > 0  # the first layer's output is already NaN
    elif fault == "weight":
        assert first_bad == 2 and inp == 0 and w == {"0": 0, lin: 0, "4": 1}
        assert fw["0"] == 0 and fw[lin] == 0 and fw["4"] > 0
    elif fault == "forward":
        assert first_bad == 0 and inp == 0 and sum(w.values()) == 0
        assert fw["0"] == 0 and fw[lin] == 0 and fw["4"] == 4 * 2  # NaN after the module
    else:  # backward: inputs, weights and forward outputs all finite
        assert first_bad == 0 and inp == 0 and sum(w.values()) == 0 and sum(fw.values()) == 0
        nf = at.xs("nonfinite", level="stat")
        assert nf["4"] == 0 and nf[lin] > 0 and nf["0"] > 0  # below the broken backward
    # only non-finite steps carry forensics: healthy steps cost nothing
    bad_steps = set(df[(df.stat == "nonfinite") & (df.value > 0)].step)
    assert set(df[df.stat == "input_nonfinite"].step) == bad_steps
    if fault in ("input", "weight"):
        assert bad_steps == {2}


def test_out_shape_and_conv_dead_units_are_channels():
    torch.manual_seed(0)
    conv = nn.Conv2d(2, 4, 3, padding=1)
    with torch.no_grad():
        conv.bias[:2] = -100.0  # channels 0 and 1: never positive anywhere
        conv.bias[2:] = 100.0
    seq = nn.Linear(5, 3)
    with torch.no_grad():
        seq.bias[0] = -100.0  # feature 0 of a (B, T, C) sequence: dead
        seq.bias[1:] = 100.0

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.r1, self.seq, self.r2 = conv, nn.ReLU(), seq, nn.ReLU()

        def forward(self, x, s):
            return self.r1(self.conv(x)).sum() + self.r2(self.seq(s)).sum()

    model = Net()
    with gw.watch(model, detail_every=1) as mon:
        loss = model(torch.randn(3, 2, 5, 5), torch.randn(3, 7, 5))
        loss.backward()
        mon.step(loss)
    run = mon.run
    assert run.meta["layer_info"]["conv"]["out_shape"] == [3, 4, 5, 5]
    assert run.meta["layer_info"]["seq"]["out_shape"] == [3, 7, 3]
    dead = run.pivot("dead_frac")
    assert dead["conv"].iloc[0] == pytest.approx(2 / 4)
    assert dead["seq"].iloc[0] == pytest.approx(1 / 3)


def test_hooks_that_stay_registered_do_not_make_torch_compile_recompile():
    import torch._dynamo as dynamo

    torch.manual_seed(0)
    model = mlp(8, 3)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    compiled = torch.compile(model, backend="eager")
    x = torch.randn(4, 8)
    dynamo.reset()
    dynamo.utils.counters.clear()
    with pytest.warns(RuntimeWarning, match="torch.compile"):
        with gw.watch(model, optimizer=opt, detail_every=2) as mon:
            for _ in range(6):  # detail and non-detail steps alternate
                opt.zero_grad()
                compiled(x).square().mean().backward()
                opt.step()
    assert dynamo.utils.counters["stats"]["unique_graphs"] == 1
    assert mon.run.pivot("grad_norm").shape[0] == 6


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_no_host_sync_between_flushes_on_cuda():
    model = mlp(64, 4).cuda()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x = torch.randn(32, 64, device="cuda")
    with gw.watch(model, optimizer=opt, detail_every=3, flush_every=1000) as mon:
        for _ in range(2):  # warm-up: plans, buffers and index tensors are built
            opt.zero_grad()
            loss = model(x).square().mean()
            loss.backward()
            opt.step()
            mon.step(loss)
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            for _ in range(6):
                opt.zero_grad()
                loss = model(x).square().mean()
                loss.backward()
                opt.step()
                mon.step(loss)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    assert mon.run.pivot("grad_norm").shape[0] == 8


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_python_float_loss_next_to_a_cuda_model_flushes():
    model = mlp(8, 2).cuda()
    with gw.watch(model, flush_every=2) as mon:
        for _ in range(4):
            loss = model(torch.randn(4, 8, device="cuda")).square().mean()
            loss.backward()
            mon.step(float(loss))
    assert mon.run.pivot("loss").shape[0] == 4
