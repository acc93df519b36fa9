"""Faults during training: a NaN mid-run, KeyboardInterrupt, fp16 autocast with GradScaler,
and write faults (a disk that fills up or turns read-only mid-run, on a real tmpfs)."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import gradwatch as gw

from ..store.tinyfs import tiny_fs


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
    # the Monitor's NaN forensics name the origin: the corrupt sample in the input
    assert run.pivot("input_nonfinite")[""].loc[7] == 1
    assert f.evidence["origin"] == "input" and "input" in f.message
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


# -- write faults: a disk that fills up or turns read-only mid-run ------------------------------

def train_steps(model, opt, mon, n):
    for _ in range(n):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(torch.randn(8, 6)), torch.randint(0, 3, (8,)))
        loss.backward()
        opt.step()
        mon.step(loss)


def leftovers(run_dir):
    """Temporary files left anywhere in the run directory."""
    return [p.name for p in run_dir.rglob("*.tmp")]


def test_disk_full_mid_run_training_goes_on_and_the_loss_is_counted(tmp_path):
    with tiny_fs("3m") as fs:
        run_dir = fs.path / "run"
        model = make()
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with gw.watch(model, run_dir, optimizer=opt, flush_every=5, flush_secs=1e9) as mon:
                train_steps(model, opt, mon, 10)
                mon.flush(wait=True)
                fs.fill()
                train_steps(model, opt, mon, 20)  # every flush fails: training goes on
                assert mon.step_count == 30 and mon._session.writer.pending_rows > 0
        messages = [str(w.message) for w in caught if w.category is RuntimeWarning]
        assert sum("could not write statistics" in m for m in messages) == 1
        lost = [m for m in messages if m.startswith("gradwatch lost")]
        assert len(lost) == 1, messages
        run = gw.load(run_dir)  # the final meta.json fit into the reserve
        assert run.meta["status"] == "closed" and run.steps == list(range(10))
        per_step = len(run.stats[run.stats.step == 1])  # a step without detail statistics
        assert run.meta["lost_steps"] == [10, 29]
        assert run.meta["lost_rows"] >= 20 * per_step > 0
        assert f"gradwatch lost {run.meta['lost_rows']:,} rows" in lost[0]
        assert f"lost_rows={run.meta['lost_rows']}" in lost[0]
        assert leftovers(run_dir) == [] and not (run_dir / ".gradwatch.lock").exists()
        fs.free()
        # the fault cleared: the directory is usable again, the run continues where it was
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            with gw.watch(model, run_dir, optimizer=opt, resume=True) as mon:
                train_steps(model, opt, mon, 5)
        run = gw.load(run_dir)
        assert run.steps == list(range(15)) and run.meta["lost_rows"] == 0
        assert [s["status"] for s in run.meta["sessions"]] == ["closed", "closed"]


def test_read_only_mid_run_retries_and_bounds_memory_then_recovers(tmp_path):
    with tiny_fs("4m") as fs:
        run_dir = fs.path / "run"
        model = make()
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with gw.watch(model, run_dir, optimizer=opt, flush_every=5, flush_secs=1e9,
                          max_pending_rows=250) as mon:
                train_steps(model, opt, mon, 10)
                mon.flush(wait=True)
                fs.readonly()
                train_steps(model, opt, mon, 20)
                mon.flush(wait=True)
                held = mon._session.writer.pending_rows
                assert 0 < held <= 250 + 5 * 28  # bounded: at most one flush over the limit
                fs.writable()  # the fault clears: the rows held are retried
                train_steps(model, opt, mon, 5)
        messages = [str(w.message) for w in caught if w.category is RuntimeWarning]
        assert any("oldest rows held for retry are being dropped" in m for m in messages)
        run = gw.load(run_dir)
        dropped = run.meta["lost_rows"]
        assert dropped > 0 and run.meta["status"] == "closed"
        first_lost, last_lost = run.meta["lost_steps"]
        assert first_lost == 10 and last_lost < 30
        # everything not dropped is on disk, once: retried rows and the steps after the fault
        kept = list(range(10)) + list(range(last_lost + 1, 35))
        extra = sorted(set(run.steps) - set(kept))
        assert set(kept) <= set(run.steps) and extra in ([], [last_lost])
        # a step's loss comes with the next flush: the last dropped step may keep just its loss
        assert set(run.stats[run.stats.step.isin(extra)].stat) <= {"loss"}
        assert not run.stats.duplicated(["step", "layer", "stat"]).any()
        assert any(f"gradwatch lost {dropped:,} rows" in m and "dropped while the fault" in m
                   for m in messages)
        assert leftovers(run_dir) == []


def test_read_only_until_close_reports_it_and_the_run_can_be_resumed(tmp_path):
    with tiny_fs("2m") as fs:
        run_dir = fs.path / "run"
        model = make()
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with gw.watch(model, run_dir, optimizer=opt, flush_every=5, flush_secs=1e9) as mon:
                train_steps(model, opt, mon, 5)
                mon.flush(wait=True)
                fs.readonly()
                train_steps(model, opt, mon, 3)
        messages = [str(w.message) for w in caught]
        assert len(messages) == 2 and "Read-only file system" in messages[0]
        assert messages[1].startswith("gradwatch lost") and "(steps 5-7)" in messages[1]
        assert "final meta.json could not be written" in messages[1]
        assert gw.load(run_dir).meta["status"] == "running"  # the disk kept the old meta
        fs.writable()
        with pytest.warns(RuntimeWarning, match="stale lock"):
            with gw.watch(model, run_dir, optimizer=opt, resume=True) as mon:
                train_steps(model, opt, mon, 2)
        run = gw.load(run_dir)
        assert run.steps == list(range(7)) and run.meta["status"] == "closed"
