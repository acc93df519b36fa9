"""A SIGKILL loses at most what the README promises: the writer never falls behind.

The background writer gets one flush every ``flush_every`` steps. When writing a part takes
longer than training the steps in it, the flushes used to queue without bound, and a kill
lost everything queued (hundreds of steps at ``flush_every=1``). Now the step after a flush
does not finish before that flush is on disk, so at any moment the finished steps not on
disk are those since the last flush, or the flush being written while the next step runs:
at most ``flush_every`` steps, as the README promises.
"""

from __future__ import annotations

import random

from .killed import kill_after, start, stop_all

INTERVALS = (1, 7, 50)


def test_a_sigkill_loses_at_most_one_flush_interval(tmp_path):
    """One real process per flush interval, killed at a random step past 150 (by then a
    writer one part per step behind had 100+ flushes queued)."""
    rng = random.Random(25)
    targets = {k: rng.randint(150, 450) for k in INTERVALS}
    procs = {k: start(tmp_path, tmp_path / f"run{k}", k) for k in INTERVALS}
    lost = {}
    try:
        for k, proc in procs.items():
            killed = kill_after(proc, tmp_path / f"run{k}", targets[k])
            assert killed.last_finished >= targets[k]
            # the steps on disk run without a gap from step 0
            assert killed.run.steps == list(range(len(killed.run.steps)))
            lost[k] = killed.lost
    finally:
        stop_all(list(procs.values()))
    print(f"steps lost by flush_every: {lost} (killed after steps {targets})")
    assert all(0 <= n <= k for k, n in lost.items()), lost


def test_the_writer_is_never_more_than_one_flush_behind(tmp_path):
    """A writer far slower than training (each flush takes 20 ms): every flush waits for the
    previous one, so the queue holds one flush at most, and close writes them all."""
    import time

    import numpy as np
    import torch

    from gradwatch.store.writer import Block, Layout, RunWriter

    def slow_sink(steps, layers, stats, values):
        time.sleep(0.02)

    (tmp_path / "stats").mkdir()
    layout = Layout(["a"], {0: [0]}, np.array([4]))
    writer = RunWriter(tmp_path, layout, slow_sink)
    batches, behind = [], []
    for step in range(30):
        batches.append(writer.submit([Block(step, "loss", (), torch.tensor([float(step)]))]))
        # flushes handed over and not yet written, once this one is handed over
        behind.append(sum(not b.done.is_set() for b in batches))
    writer.close()
    assert max(behind) == 1  # only the one just handed over
    assert writer.lost_rows == 0 and writer.written_rows == 30


def test_a_step_does_not_finish_before_the_previous_flush_is_on_disk(tmp_path, monkeypatch):
    """In process, with a writer slower than training (each part takes 30 ms to write): after
    every finished step, the steps missing from disk are at most ``flush_every``, which is
    what a SIGKILL at that moment would lose. A writer only one flush behind would miss
    ``2 * flush_every - 1`` of them right after a flush."""
    import time

    import pyarrow.parquet as pq
    import torch
    from torch import nn

    import gradwatch as gw
    from gradwatch.store import format as fmt
    from gradwatch.store import writer as gw_writer

    real = gw_writer.write_part

    def slow_write_part(path, table):
        time.sleep(0.03)
        real(path, table)

    monkeypatch.setattr(gw_writer, "write_part", slow_write_part)
    k = 3
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(8, 4), torch.randint(0, 2, (8,))
    missing = []
    with gw.watch(model, tmp_path / "run", optimizer=opt, flush_every=k,
                  flush_secs=float("inf")) as mon:
        for step in range(4 * k):
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            mon.step(loss)
            on_disk = {int(s) for p in fmt.live_parts(tmp_path / "run" / "stats")
                       for s in pq.read_table(p, columns=["step"])["step"].to_pylist()}
            missing.append(step + 1 - len(on_disk))
    assert max(missing) == k, missing  # reached right after each flush, never passed
    assert gw.load(tmp_path / "run").steps == list(range(4 * k))
