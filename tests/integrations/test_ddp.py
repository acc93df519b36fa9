"""DDP with 2 real gloo processes: statistics combined across ranks equal one process."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import gradwatch as gw

from .ddp_worker import batches, make_model

WORKER = Path(__file__).with_name("ddp_worker.py")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_two_ranks_match_a_single_process_on_the_combined_batch(tmp_path):
    run_dir = tmp_path / "ddp"
    port = str(free_port())
    procs = [
        subprocess.Popen([sys.executable, str(WORKER), str(r), "2", port, str(run_dir)],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for r in range(2)
    ]
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    # only rank 0 wrote: one run directory, no second writer's files
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ddp"]
    ddp = gw.load(run_dir)
    assert ddp.meta["distributed"] == {"world_size": 2}

    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with gw.watch(model, optimizer=opt, detail_every=1) as mon:
        for step in range(3):
            x, y = batches(step)
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            mon.step(loss)
    single = mon.run
    for stat in ("grad_norm", "backprop_norm", "update_ratio", "act_mean", "act_std", "loss"):
        a, b = ddp.pivot(stat), single.pivot(stat)
        assert list(a.columns) == list(b.columns) and list(a.index) == [0, 1, 2], stat
        np.testing.assert_allclose(a.to_numpy(), b.to_numpy(), rtol=1e-5, atol=1e-7,
                                   err_msg=stat)


FAIL_WORKER = Path(__file__).with_name("ddp_fail_worker.py")


def run_failing(run_dir, failing, mode):
    """Two ranks of the docs/howto/ddp.md loop; rank ``failing`` raises at step 12."""
    port = str(free_port())
    procs = [
        subprocess.Popen([sys.executable, str(FAIL_WORKER), str(r), "2", port, str(run_dir),
                          str(failing), mode],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for r in range(2)
    ]
    outs = []
    for p in procs:
        try:
            outs.append(p.communicate(timeout=150)[0])
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise AssertionError("a rank hung after another rank failed") from None
    ended = time.time()
    failed_at = float(re.search(r"failing at ([\d.]+)", outs[failing]).group(1))
    return procs, outs, ended - failed_at


def check_failure(run_dir, procs, outs, failing, seconds):
    assert seconds < 30, f"ranks took {seconds:.1f} s to end after the failure"
    assert all(p.returncode != 0 for p in procs)
    # the failing rank reports the user's own exception, last, and nothing from gradwatch
    last = outs[failing].strip().splitlines()[-1]
    assert "UserError: rank" in last and "failed at step 12" in last, outs[failing]
    assert "gradwatch/monitor" not in outs[failing]  # no frame of ours in its traceback
    assert "Timed out" not in outs[failing] and "DistributedFlushError" not in outs[failing]
    # the peer ends on the lost connection inside DDP's all-reduce, not in a gradwatch wait
    assert "DistributedFlushError" not in outs[1 - failing]
    run = gw.load(run_dir)
    assert run.meta["status"] == "failed"
    assert run.steps == list(range(10))  # flushed at steps 4 and 9; 10-11 not combined
    assert run.loss().index.tolist() == list(range(10))  # the boundary steps' losses too
    assert run.meta["lost_rows"] == 0 and run.meta["uncombined_steps"] >= 2
    assert not (run_dir / ".gradwatch.lock").exists()


def test_one_rank_failing_ends_every_rank_with_the_users_exception(tmp_path):
    procs, outs, seconds = run_failing(tmp_path / "run", failing=1, mode="with")
    check_failure(tmp_path / "run", procs, outs, 1, seconds)


@pytest.mark.slow
@pytest.mark.parametrize(("failing", "mode"), [(0, "with"), (1, "bare"), (0, "bare")])
def test_one_rank_failing_other_cases(tmp_path, failing, mode):
    """Rank 0 (the writer) failing, and Monitors left open (closed by gradwatch at exit)."""
    procs, outs, seconds = run_failing(tmp_path / "run", failing=failing, mode=mode)
    check_failure(tmp_path / "run", procs, outs, failing, seconds)


@pytest.mark.slow
def test_ddp_resume_numbers_and_flushes_steps_as_rank0s_run(tmp_path):
    worker = Path(__file__).with_name("ddp_resume_worker.py")
    port = str(free_port())
    procs = [subprocess.Popen([sys.executable, str(worker), str(r), "2", port,
                               str(tmp_path / "run")],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for r in range(2)]
    outs = [p.communicate(timeout=150)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    run = gw.load(tmp_path / "run")
    assert run.steps == list(range(6)) and run.meta["status"] == "closed"
    assert not run.stats.duplicated(["step", "layer", "stat"]).any()
    assert [s["first_step"] for s in run.meta["sessions"]] == [0, 3]
