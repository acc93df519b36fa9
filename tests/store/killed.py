"""A training process to SIGKILL: it reports each step it has finished, the parent kills it.

The child trains a small MLP with ``optimizer=`` (the loss given after ``opt.step()``, as a
training loop does), at a given ``flush_every`` and no time-based flush, and prints the
number of every step once ``opt.step()`` and ``mon.step(loss)`` have returned. The parent
reads those lines, kills the child where it likes, and compares the last step the child
finished with what the run directory holds.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import warnings
from dataclasses import dataclass
from pathlib import Path

import gradwatch as gw

CHILD = textwrap.dedent(
    """
    import os, signal, sys, time, torch, gradwatch as gw
    from torch import nn
    torch.set_num_threads(1)
    torch.manual_seed(0)
    run_dir, k, stop = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(),
                          nn.Linear(16, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    mon = gw.watch(model, run_dir, optimizer=opt, flush_every=k, flush_secs=float("inf"),
                   resume=True)
    x, y = torch.randn(16, 8), torch.randint(0, 2, (16,))
    step = mon.step_count
    while True:
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        mon.step(loss)
        print(step, flush=True)
        step += 1
        if step == stop:  # stop here, once the last step is on disk: then the parent kills
            while stop - 1 not in gw.load(run_dir).steps:
                time.sleep(0.02)
            print("idle", flush=True)
            time.sleep(60)
    """
)


@dataclass
class Killed:
    """What a killed child left: the last step it finished and the run on disk."""

    last_finished: int
    run: gw.Run

    @property
    def lost(self) -> int:
        """Steps the child finished that are not on disk."""
        steps = self.run.steps
        return self.last_finished - (max(steps) if steps else -1)

    @property
    def last_complete(self) -> int:
        """The last step on disk with all of its values (-1 if none)."""
        steps = self.run.steps
        have_loss = set(self.run.loss().index)
        complete = [s for s in steps if s in have_loss]
        return max(complete) if complete else -1


def start(tmp: Path, run_dir: Path, k: int, stop: int = -1) -> subprocess.Popen:
    """Start a child training into ``run_dir`` (resumed if it holds a run)."""
    script = tmp / "killed_child.py"
    if not script.exists():
        script.write_text(CHILD)
    return subprocess.Popen([sys.executable, str(script), str(run_dir), str(k), str(stop)],
                            stdout=subprocess.PIPE, text=True)


def stop_all(procs: list[subprocess.Popen]) -> None:
    """Kill the children still running (a failed test leaves none behind)."""
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def kill_after(proc: subprocess.Popen, run_dir: Path, step: int) -> Killed:
    """Kill ``proc`` once it has finished ``step`` (or gone idle); read what is on disk."""
    last = -1
    while True:
        line = proc.stdout.readline()
        assert line, "the child died before it was killed"
        if line.strip() == "idle":
            break
        last = int(line)
        if last >= step:
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    for line in proc.stdout.read().split():  # steps it finished before the signal landed
        if line != "idle":
            last = int(line)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a corrupt part would warn: fail instead
        run = gw.load(run_dir)
    return Killed(last, run)
