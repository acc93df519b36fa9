"""A SIGKILL loses at most what the README promises: the writer never falls behind.

The background writer gets one flush every ``flush_every`` steps. When writing a part takes
longer than training the steps in it, the flushes used to queue without bound, and a kill
lost everything queued (hundreds of steps at ``flush_every=1``). A flush now waits until the
previous one is written, so at any moment the steps not on disk are those since the last
flush (fewer than ``flush_every``) and the one flush being written: fewer than
``2 * flush_every`` steps, one step at ``flush_every=1``.
"""

from __future__ import annotations

import random

from .killed import kill_after, start, stop_all

INTERVALS = (1, 7, 50)


def test_a_sigkill_loses_fewer_than_two_flush_intervals(tmp_path):
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
    assert all(0 <= n <= 2 * k - 1 for k, n in lost.items()), lost


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
