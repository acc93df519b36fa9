"""DDP with 2 real gloo processes: statistics combined across ranks equal one process."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
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
