"""Watching changes nothing; close() leaves no hook; errors flush; accumulation and AMP."""

from __future__ import annotations

import math
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from torch import nn

import gradwatch as gw


def make_mlp(depth=4, width=16):
    layers = []
    for _ in range(depth):
        layers += [nn.Linear(width, width), nn.Tanh()]
    return nn.Sequential(*layers, nn.Linear(width, 3))


def train(model, opt, steps, mon=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.randn(8, 16, generator=g)
        y = torch.randint(0, 3, (8,), generator=g)
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        if mon is not None:
            mon.step(loss)


def hook_count(model, opt):
    n = 0
    for m in model.modules():
        n += len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
        n += len(getattr(m, "_backward_pre_hooks", {}))
    n += len(opt._optimizer_step_pre_hooks) + len(opt._optimizer_step_post_hooks)
    return n


@pytest.mark.parametrize("mode", ["optimizer", "manual"])
def test_training_is_bit_identical_and_no_hook_is_left(tmp_path, mode):
    torch.manual_seed(0)
    a = make_mlp()
    b = make_mlp()
    b.load_state_dict(a.state_dict())
    opt_a = torch.optim.Adam(a.parameters(), lr=1e-2)
    opt_b = torch.optim.Adam(b.parameters(), lr=1e-2)
    train(a, opt_a, 25)
    kwargs = {"optimizer": opt_b} if mode == "optimizer" else {}
    with gw.watch(b, tmp_path / "run", detail_every=1, **kwargs) as mon:
        if mode == "optimizer":
            train(b, opt_b, 25, mon)
        else:
            g = torch.Generator().manual_seed(0)
            for _ in range(25):
                x = torch.randn(8, 16, generator=g)
                y = torch.randint(0, 3, (8,), generator=g)
                opt_b.zero_grad()
                loss = nn.functional.cross_entropy(b(x), y)
                loss.backward()
                mon.step(loss)
                opt_b.step()
        assert hook_count(b, opt_b) > 0
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)
    assert hook_count(b, opt_b) == 0
    run = gw.load(tmp_path / "run")
    assert run.steps == list(range(25))
    assert run.meta["status"] == "closed"
    assert not (tmp_path / "run" / ".gradwatch.lock").exists()


def test_exception_inside_with_flushes_and_reraises(tmp_path):
    model = make_mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(RuntimeError, match="boom"):
        with gw.watch(model, tmp_path / "run", optimizer=opt, flush_every=1000,
                      flush_secs=1000):
            train(model, opt, 7)
            raise RuntimeError("boom")
    run = gw.load(tmp_path / "run")
    assert run.steps == list(range(7))
    assert run.meta["status"] == "failed"
    assert hook_count(model, opt) == 0


def test_gradient_accumulation_records_one_row_per_optimizer_step():
    model = make_mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    expected = []
    with gw.watch(model, optimizer=opt, detail_every=1) as mon:
        g = torch.Generator().manual_seed(3)
        for _ in range(5):
            opt.zero_grad()
            for _ in range(4):  # micro-batches
                x = torch.randn(4, 16, generator=g)
                y = torch.randint(0, 3, (4,), generator=g)
                (nn.functional.cross_entropy(model(x), y) / 4).backward()
            expected.append(math.sqrt(sum(float((p.grad.double() ** 2).sum())
                                          for p in model[0].parameters())))
            opt.step()
    run = mon.run
    gn = run.pivot("grad_norm")
    assert list(gn.index) == [0, 1, 2, 3, 4]
    assert len(run.stats[(run.stats.layer == "0") & (run.stats.stat == "grad_norm")]) == 5
    np.testing.assert_allclose(gn["0"].to_numpy(), expected, rtol=1e-5)
    # the back-propagated signal covers all 4 micro-batches: norm over the 4 calls
    assert run.pivot("backprop_norm")["0"].notna().all()


def test_gradscaler_records_unscaled_norms_and_the_skipped_step():
    torch.manual_seed(0)
    ref = make_mlp()
    model = make_mlp()
    model.load_state_dict(ref.state_dict())
    x = torch.randn(8, 16)
    y = torch.randint(0, 3, (8,))
    # reference: no scaler
    with gw.watch(ref) as mon_ref:
        loss = nn.functional.cross_entropy(ref(x), y)
        loss.backward()
        mon_ref.step(loss)
    want = mon_ref.run
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    with gw.watch(model, optimizer=opt, scaler=scaler) as mon:
        for step in range(3):
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x), y)
            scaler.scale(loss).backward()
            if step == 1:
                model[0].weight.grad[0, 0] = float("inf")  # scaler must skip this step
            scaler.step(opt)
            scaler.update()
            mon.step(loss)
    assert "step" not in vars(scaler)  # the wrapper is gone
    run = mon.run
    gn, bp, nf = run.pivot("grad_norm"), run.pivot("backprop_norm"), run.pivot("nonfinite")
    # the skipped step (1) records no gradient statistics: skipped = 1 says why
    assert list(gn.index) == [0, 2]
    assert run.pivot("skipped")[""].tolist() == [0.0, 1.0, 0.0]
    for layer in ("0", "2", "8"):
        w_gn = want.pivot("grad_norm")[layer].iloc[0]
        w_bp = want.pivot("backprop_norm")[layer].iloc[0]
        assert gn[layer].iloc[0] == pytest.approx(w_gn, rel=1e-5)
        assert bp[layer].iloc[0] == pytest.approx(w_bp, rel=1e-5)
        assert gn[layer].iloc[1] == pytest.approx(w_gn, rel=1e-5)
    assert nf["0"].tolist() == [0, 0]
    assert scaler.get_scale() < 2.0**10  # the scaler did see the inf and backed off


def test_no_grad_evaluation_in_between_is_not_recorded():
    model = make_mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with gw.watch(model, optimizer=opt, detail_every=1) as mon:
        train(model, opt, 2, mon)
        with torch.no_grad():
            for _ in range(3):
                model(torch.randn(50, 16))
        train(model, opt, 2, mon)
    run = mon.run
    assert run.steps == [0, 1, 2, 3]
    assert run.meta["steps_seen"] == 4


def test_every_and_log_schedules():
    model = make_mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with gw.watch(model, optimizer=opt, every=3) as mon:
        train(model, opt, 10, mon)
    assert mon.run.steps == [0, 3, 6, 9]
    assert list(mon.run.loss().index) == [0, 3, 6, 9]
    with gw.watch(model, optimizer=opt, every="log") as mon:
        train(model, opt, 120, mon)
    steps = mon.run.steps
    assert steps[:10] == list(range(10))  # the first steps are always recorded
    assert 100 in steps and len(steps) < 35
    assert all(b > a for a, b in zip(steps, steps[1:], strict=False))


def test_detail_schedule_default():
    model = make_mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with gw.watch(model, optimizer=opt) as mon:
        train(model, opt, 21, mon)
    run = mon.run
    assert list(run.pivot("grad_norm").index) == list(range(21))
    assert list(run.pivot("update_ratio").index) == [0, 10, 20]
    assert list(run.pivot("act_std").index) == [0, 10, 20]


def test_loss_attached_to_the_right_step_in_both_call_orders():
    model = make_mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    losses = []
    with gw.watch(model, optimizer=opt) as mon:
        g = torch.Generator().manual_seed(0)
        for i in range(6):
            x = torch.randn(8, 16, generator=g)
            y = torch.randint(0, 3, (8,), generator=g)
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            losses.append(loss.item())
            if i % 2:
                opt.step()
                mon.step(loss)  # after the step
            else:
                mon.step(loss)  # before the step
                opt.step()
    np.testing.assert_allclose(mon.run.loss().to_numpy(), losses, rtol=1e-6)


def test_close_diagnoses_the_run_and_writes_findings(tmp_path):
    torch.manual_seed(0)
    layers = []
    for _ in range(10):
        lin = nn.Linear(32, 32)
        bound = 1 / math.sqrt(32)  # Glorot & Bengio's "standard" init
        nn.init.uniform_(lin.weight, -bound, bound)
        nn.init.zeros_(lin.bias)
        layers += [lin, nn.Sigmoid()]
    model = nn.Sequential(*layers, nn.Linear(32, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with gw.watch(model, tmp_path / "run", optimizer=opt) as mon:
        for _ in range(12):
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(torch.randn(16, 32)),
                                               torch.randint(0, 3, (16,)))
            loss.backward()
            opt.step()
            mon.step(loss)
    findings = gw.load(tmp_path / "run").findings
    vanishing = [f for f in findings if f.kind == "vanishing"]
    # backprop_norm, the vanishing signal, is taken at detail steps (0 and 10 of 12)
    assert vanishing and vanishing[0].steps == (0, 10)
    assert "0" in vanishing[0].layers
    with gw.watch(model, tmp_path / "quiet", optimizer=opt, diagnose=False) as mon:
        opt.zero_grad()
        model(torch.randn(4, 32)).sum().backward()
        opt.step()
    assert (tmp_path / "quiet" / "findings.jsonl").read_text() == ""


# -- statuses: how the run ended, with and without ``with`` -------------------------------------

STATUS_CHILD = textwrap.dedent(
    """
    import os, signal, sys, torch, gradwatch as gw
    from torch import nn
    case, run_dir = sys.argv[1], sys.argv[2]
    torch.set_num_threads(1)
    model = nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    def train(mon, n=3):
        for _ in range(n):
            opt.zero_grad(); loss = model(torch.randn(3, 4)).pow(2).mean(); loss.backward()
            opt.step(); mon.step(loss)
    if case.endswith("-with"):
        with gw.watch(model, run_dir, optimizer=opt, flush_secs=1e9) as mon:
            train(mon)
            if case == "exit-with":
                sys.exit(3)
            os.kill(os.getpid(), signal.SIGTERM)
            train(mon, 10**6)  # the handler raises SystemExit before this ends
    mon = gw.watch(model, run_dir, optimizer=opt, flush_secs=1e9)
    train(mon)
    if case == "raise-bare":
        raise RuntimeError("boom")
    if case == "interrupt-bare":
        raise KeyboardInterrupt
    # "end-bare": the script ends without close(); gradwatch closes the run at exit
    """
)


STATUSES = {"raise-bare": "failed", "sigterm-with": "interrupted", "interrupt-bare": "interrupted",
            "exit-with": "interrupted", "end-bare": "closed"}


@pytest.mark.parametrize(
    "cases",
    [
        ("raise-bare", "sigterm-with"),
        pytest.param(("interrupt-bare", "exit-with", "end-bare"), marks=pytest.mark.slow),
    ],
)
def test_status_says_how_the_run_ended(tmp_path, cases):
    script = tmp_path / "child.py"
    script.write_text(STATUS_CHILD)
    expected = {case: STATUSES[case] for case in cases}
    procs = {case: subprocess.Popen([sys.executable, str(script), case, str(tmp_path / case)],
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for case in expected}
    for case, proc in procs.items():
        out = proc.communicate(timeout=120)[0]
        assert (proc.returncode == 0) == (case == "end-bare"), (case, out)
        run = gw.load(tmp_path / case)
        assert run.meta["status"] == expected[case], (case, out)
        assert run.steps == [0, 1, 2] or case == "sigterm-with", case
        assert not (tmp_path / case / ".gradwatch.lock").exists()
        if case == "raise-bare":  # the user's exception is what the program reports
            assert out.strip().splitlines()[-1] == "RuntimeError: boom"


def test_exception_without_with_then_close_in_finally_is_failed(tmp_path):
    """close(status=...) sets the status explicitly; an unknown one is refused."""
    model = make_mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    mon = gw.watch(model, tmp_path / "run", optimizer=opt)
    train(model, opt, 2, mon)
    with pytest.raises(gw.GradwatchValueError, match="status must be"):
        mon.close(status="crashed")
    mon.close(status="failed")
    assert gw.load(tmp_path / "run").meta["status"] == "failed"


# -- resume -------------------------------------------------------------------------------------

def test_resume_continues_a_closed_run_and_records_both_sessions(tmp_path):
    model = make_mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with gw.watch(model, tmp_path / "run", optimizer=opt, every=2) as mon:
        train(model, opt, 7, mon)  # records 0, 2, 4, 6
    with pytest.raises(gw.RunDirectoryError, match="resume=True"):
        gw.watch(model, tmp_path / "run", optimizer=opt)
    with pytest.raises(gw.GradwatchValueError, match="layers differ"):
        gw.watch(make_mlp(depth=2), tmp_path / "run", resume=True)
    with gw.watch(model, tmp_path / "run", optimizer=opt, every=2, resume=True) as mon:
        assert mon.step_count == 7  # after the last step on disk
        train(model, opt, 4, mon)  # steps 7..10: records 8, 10
    run = gw.load(tmp_path / "run")
    assert run.steps == [0, 2, 4, 6, 8, 10]
    assert not run.stats.duplicated(["step", "layer", "stat"]).any()
    assert list(run.loss().index) == [0, 2, 4, 6, 8, 10]
    sessions = run.meta["sessions"]
    assert [s["status"] for s in sessions] == ["closed", "closed"]
    assert [s["first_step"] for s in sessions] == [0, 7] and run.meta["resumed"] is True
    assert run.meta["steps_seen"] == 11 and run.meta["steps_recorded"] == 6
    # resume on a directory without a run starts one
    with gw.watch(model, tmp_path / "fresh", optimizer=opt, resume=True) as mon:
        train(model, opt, 2, mon)
    assert gw.load(tmp_path / "fresh").steps == [0, 1]


# -- bad watch() arguments ----------------------------------------------------------------------

@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"flush_every": 0.5}, gw.GradwatchValueError, "flush_every must be a whole number"),
        ({"flush_every": float("nan")}, gw.GradwatchValueError, "flush_every"),
        ({"flush_every": float("inf")}, gw.GradwatchValueError, "flush_every"),
        ({"flush_every": 0}, gw.GradwatchValueError, "flush_every"),
        ({"flush_every": "10"}, gw.GradwatchTypeError, "flush_every"),
        ({"flush_secs": float("nan")}, gw.GradwatchValueError, "flush_secs must be a positive"),
        ({"flush_secs": -1}, gw.GradwatchValueError, "flush_secs"),
        ({"flush_secs": True}, gw.GradwatchTypeError, "flush_secs"),
        ({"run_dir": ""}, gw.GradwatchValueError, "run_dir must not be empty"),
        ({"run_dir": 123}, gw.GradwatchTypeError, "run_dir must be a path"),
        ({"config": "x"}, gw.GradwatchTypeError, "config must be a dict"),
        ({"config": {1: 2}}, gw.GradwatchTypeError, "config keys must be str"),
        ({"stats": 5}, gw.GradwatchTypeError, "stats must be a list"),
        ({"stats": "grad_norm"}, gw.GradwatchTypeError, "stats must be a list"),
        ({"stats": []}, gw.GradwatchValueError, "stats is empty"),
        ({"stats": [5]}, gw.GradwatchTypeError, "stats must hold statistic names"),
        ({"overwrite": "yes"}, gw.GradwatchTypeError, "overwrite must be True or False"),
        ({"resume": 1}, gw.GradwatchTypeError, "resume must be True or False"),
        ({"resume": True, "overwrite": True}, gw.GradwatchValueError, "contradict"),
        ({"max_pending_rows": 0}, gw.GradwatchValueError, "max_pending_rows"),
        ({"diagnose": "yes"}, gw.GradwatchTypeError, "diagnose must be"),
        ({"name": 3}, gw.GradwatchTypeError, "name must be"),
        ({"tensorboard": ""}, gw.GradwatchValueError, "tensorboard must not be empty"),
    ],
)
def test_bad_watch_arguments_name_the_argument_and_the_fix(tmp_path, monkeypatch, kwargs,
                                                          error, match):
    monkeypatch.chdir(tmp_path)
    model = make_mlp(depth=1)
    kwargs = {"run_dir": tmp_path / "run", **kwargs}
    with pytest.raises(error, match=match):
        gw.watch(model, **kwargs)
    assert hook_count(model, torch.optim.SGD(model.parameters())) == 0
    assert list(tmp_path.iterdir()) == []  # nothing written, not even in the current folder


def test_lazy_modules_must_be_initialised_first():
    model = nn.Sequential(nn.LazyLinear(4), nn.ReLU(), nn.Linear(4, 1))
    with pytest.raises(gw.GradwatchValueError, match="lazy parameters.*run one forward pass"):
        gw.watch(model)
    model(torch.randn(2, 3))  # now the shapes are known
    with gw.watch(model) as mon:
        model(torch.randn(2, 3)).sum().backward()
        mon.step()
    assert mon.run.steps == [0]
