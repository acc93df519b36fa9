"""Faults during training: a NaN mid-run, KeyboardInterrupt, fp16 autocast with GradScaler."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

import gradwatch as gw


def make():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(),
                         nn.Linear(16, 3))


def test_nan_mid_run_is_recorded_and_diagnosed_with_its_first_step_and_layer(tmp_path):
    model = make()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    g = torch.Generator().manual_seed(0)
    with gw.watch(model, tmp_path / "run", optimizer=opt) as mon:
        for step in range(12):
            x = torch.randn(8, 6, generator=g)
            y = torch.randint(0, 3, (8,), generator=g)
            if step == 7:
                x[0, 0] = float("nan")  # a corrupt sample poisons this step and all after it
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            mon.step(loss)
    run = gw.load(tmp_path / "run")
    assert run.meta["status"] == "closed" and run.steps == list(range(12))
    loss = run.loss()
    assert np.isfinite(loss.loc[:6]).all() and math.isnan(loss.loc[7])
    nf = run.pivot("nonfinite")
    assert (nf.loc[:6].to_numpy() == 0).all() and (nf.loc[7].to_numpy() > 0).all()
    findings = [f for f in run.findings if f.kind == "nonfinite"]
    assert len(findings) == 1
    f = findings[0]
    assert f.severity == "error" and f.steps[0] == 7
    assert f.layers and f.layers[0] in run.layers
    assert "7" in f.message


def test_keyboard_interrupt_flushes_and_marks_the_run(tmp_path):
    model = make()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    with pytest.raises(KeyboardInterrupt):
        with gw.watch(model, tmp_path / "run", optimizer=opt, flush_every=1000,
                      flush_secs=1e9) as mon:
            for step in range(5):
                opt.zero_grad()
                loss = model(torch.randn(4, 6)).pow(2).mean()
                loss.backward()
                opt.step()
                mon.step(loss)
                if step == 3:
                    raise KeyboardInterrupt
    run = gw.load(tmp_path / "run")
    assert run.steps == [0, 1, 2, 3] and run.meta["status"] == "interrupted"


def test_fp16_autocast_with_gradscaler_on_cpu():
    model = make()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8)
    with gw.watch(model, optimizer=opt, scaler=scaler, detail_every=1) as mon:
        for _ in range(3):
            x, y = torch.randn(8, 6), torch.randint(0, 3, (8,))
            opt.zero_grad()
            with torch.autocast("cpu", dtype=torch.float16):
                loss = nn.functional.cross_entropy(model(x), y)
            scaler.scale(loss).backward()
            scaler.unscale_(opt)
            unscaled = math.sqrt(sum(float((p.grad.double() ** 2).sum())
                                     for p in model[0].parameters()))
            scaler.step(opt)
            scaler.update()
            mon.step(loss)
    run = mon.run
    assert run.steps == [0, 1, 2]
    assert run.pivot("grad_norm")["0"].iloc[-1] == pytest.approx(unscaled, rel=1e-5)
    assert np.isfinite(run.pivot("backprop_norm").to_numpy()).all()
