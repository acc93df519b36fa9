"""The loss of the step at a flush boundary is written in that flush, not in the next part.

With ``optimizer=``, ``optimizer.step()`` closes a step and ``mon.step(loss)`` brings its loss
afterwards. A flush due when the step closes waits for that loss (or for the next forward
pass, when none comes), so a part on disk never holds a step without its loss: a kill, or a
failed rank under DDP, loses whole steps, and a resumed run has a loss at every step.
"""

from __future__ import annotations

import time

import pytest
import torch
from torch import nn

import gradwatch as gw
from tests.store.killed import kill_after, start, stop_all


def _model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 2))
    return model, torch.optim.SGD(model.parameters(), lr=0.05)


def _wait_on_disk(run_dir, step, timeout=60.0):
    """The run as the writer left it on disk once ``step`` is there (no flush asked)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        run = gw.load(run_dir)
        if step in run.steps:
            return run
        time.sleep(0.02)
    raise AssertionError(f"step {step} never reached the disk")


@pytest.mark.parametrize("late", [True, False], ids=["loss-after-step", "no-loss-call"])
def test_each_flushed_part_holds_its_last_steps_loss(tmp_path, late):
    """Flushes at steps 3 and 7 (flush_every=4): read from disk while the run is open."""
    model, opt = _model()
    x, y = torch.randn(16, 6), torch.randint(0, 2, (16,))
    mon = gw.watch(model, tmp_path / "run", optimizer=opt, flush_every=4, flush_secs=1e9)
    for step in range(9):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        if not late:
            mon.step(loss)  # before the optimizer step: the loss of the pending step
        loss.backward()
        opt.step()
        if late:
            mon.step(loss)
        if step in (3, 7):
            run = _wait_on_disk(tmp_path / "run", step)
            assert run.steps == list(range(step + 1))
            assert run.loss().index.tolist() == list(range(step + 1))
    mon.close()
    assert gw.load(tmp_path / "run").loss().index.tolist() == list(range(9))


def test_a_flush_due_without_a_loss_happens_at_the_next_forward(tmp_path):
    """A loop that never gives the loss: the flush of step 3 waits only for the next
    forward pass, so the steps do not wait a whole interval more."""
    model, opt = _model()
    x = torch.randn(16, 6)
    mon = gw.watch(model, tmp_path / "run", optimizer=opt, flush_every=4, flush_secs=1e9)
    for _ in range(4):
        opt.zero_grad()
        model(x).pow(2).mean().backward()
        opt.step()
    time.sleep(0.2)
    assert gw.load(tmp_path / "run").steps == []  # held for the loss that may come
    model(x)  # the next step begins: no loss is coming for step 3
    assert _wait_on_disk(tmp_path / "run", 3).steps == [0, 1, 2, 3]
    mon.close()


def test_a_killed_run_has_the_loss_of_every_step_on_disk_and_resumes_whole(tmp_path):
    """Children killed right after a flush boundary has reached the disk (what lost the
    boundary step's loss in every run); then the run is resumed and trained on."""
    stops = {3: 9, 7: 14}  # flush_every -> steps trained before the kill (a boundary at 8, 13)
    runs = {k: tmp_path / f"run{k}" for k in stops}
    procs = [start(tmp_path, runs[k], k, stop=n) for k, n in stops.items()]
    try:
        for proc, (k, n) in zip(procs, stops.items(), strict=True):
            killed = kill_after(proc, runs[k], n)
            assert killed.last_finished == n - 1
            assert killed.run.steps == list(range(n))
            assert killed.run.loss().index.tolist() == list(range(n))  # the boundary's too
    finally:
        stop_all(procs)
    # resume one: the new session's boundaries keep their losses as well
    run_dir, n = runs[3], stops[3]
    model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(),
                          nn.Linear(16, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    x, y = torch.randn(16, 8), torch.randint(0, 2, (16,))
    with pytest.warns(RuntimeWarning, match="stale lock"):  # the killed writer's
        mon = gw.watch(model, run_dir, optimizer=opt, flush_every=3, resume=True)
    with mon:
        assert mon.step_count == n
        for _ in range(5):
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            mon.step(loss)
    run = gw.load(run_dir)
    assert run.steps == list(range(n + 5))
    assert run.loss().index.tolist() == list(range(n + 5))
    assert [s["status"] for s in run.meta["sessions"]] == ["crashed", "closed"]
