"""The run directory: killed writers, foreign readers, corrupt and foreign directories."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import warnings

import pandas as pd
import pytest
import torch
from torch import nn

import gradwatch as gw
from gradwatch.errors import GradwatchError, RunDirectoryError, RunLockedError
from gradwatch.store import lock
from gradwatch.store.rundir import run_state

CHILD = textwrap.dedent(
    """
    import sys, torch, gradwatch as gw
    from torch import nn
    torch.manual_seed(int(sys.argv[2]))
    model = nn.Sequential(nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    # tiny flush interval and frequent compaction: kills land inside writes and compactions
    mon = gw.watch(model, sys.argv[1], optimizer=opt, flush_every=3, flush_secs=1e9)
    step = 0
    while True:
        x = torch.randn(16, 8); y = torch.randint(0, 2, (16,))
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward(); opt.step(); mon.step(loss)
        step += 1
        if step % 3 == 0:
            mon.flush(wait=True)
            print(step, flush=True)
    """
)
KILL_POINTS = 20


def _start(script, run_dir, seed):
    return subprocess.Popen([sys.executable, str(script), str(run_dir), str(seed)],
                            stdout=subprocess.PIPE, text=True)


def test_sigkill_at_random_points_loses_nothing_flushed(tmp_path):
    """20 kills at random moments (often mid-write); every step reported flushed is readable;
    a killed run reads as "crashed" and resumes as one run, no step twice."""
    import random

    script = tmp_path / "child.py"
    script.write_text(CHILD)
    rng = random.Random(1234)
    t0 = time.monotonic()
    trials = list(range(KILL_POINTS))
    while trials:
        batch, trials = trials[:2], trials[2:]  # two children at a time (2 cores)
        procs = {t: _start(script, tmp_path / f"run{t}", t) for t in batch}
        for t, proc in procs.items():
            target = 3 * rng.randint(1, 25)
            flushed = 0
            while flushed < target:
                line = proc.stdout.readline()
                assert line, "child died"
                flushed = int(line)
            time.sleep(rng.random() * 0.05)  # land anywhere, not just after a flush
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            with warnings.catch_warnings():
                warnings.simplefilter("error")  # a corrupt part would warn: fail instead
                run = gw.load(tmp_path / f"run{t}")
            assert run.meta["status"] == "running"
            assert run.steps[:flushed] == list(range(flushed))
            per_step = run.stats[run.stats.step < flushed].groupby("step").size()
            # every flushed step complete: 3 layers x 3 fast stats + loss; detail steps +20
            # (backprop_norm is a detail statistic by default; logit_max and logsumexp_mean
            # of the output's logits are two more)
            assert {s: n for s, n in per_step.items()} == {
                s: 30 if s % 10 == 0 else 10 for s in range(flushed)}
    print(f"{KILL_POINTS} kill points in {time.monotonic() - t0:.0f} s")
    # the lock of a dead writer is stale: a new writer may take the directory over
    killed = tmp_path / f"run{KILL_POINTS - 1}"
    info = lock.read_lock(killed)
    assert info.alive is False and info.stale and run_state(killed) == "crashed"
    with pytest.warns(RuntimeWarning, match="stale lock"):
        with pytest.raises(RunDirectoryError, match="already holds a run"):
            gw.watch(nn.Linear(2, 2), killed)
    # ... and resume it: the steps continue after the last one on disk, none twice
    before = gw.load(killed)
    last = max(before.steps)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    with gw.watch(model, killed, optimizer=opt, flush_every=3, resume=True) as mon:
        assert mon.step_count == last + 1
        for _ in range(7):
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(torch.randn(16, 8)),
                                               torch.randint(0, 2, (16,)))
            loss.backward()
            opt.step()
            mon.step(loss)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        run = gw.load(killed)
    assert run.steps == list(range(last + 8))
    assert not run.stats.duplicated(["step", "layer", "stat"]).any()
    old = before.stats.set_index(["step", "layer", "stat"])["value"]
    assert run.stats.set_index(["step", "layer", "stat"])["value"].loc[old.index].equals(old)
    assert [s["status"] for s in run.meta["sessions"]] == ["crashed", "closed"]
    assert run.meta["status"] == "closed" and run_state(killed) == "closed"


def test_parts_are_readable_without_gradwatch(tmp_path):
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with gw.watch(model, tmp_path / "run", optimizer=opt, flush_every=3) as mon:
        for _ in range(10):
            opt.zero_grad()
            loss = model(torch.randn(5, 4)).pow(2).mean()
            loss.backward()
            opt.step()
            mon.step(loss)
    run = gw.load(tmp_path / "run")
    n = len(run.stats)
    df = pd.read_parquet(tmp_path / "run" / "stats")
    assert len(df) == n and list(df.columns) == ["step", "layer", "stat", "value"]
    polars = pytest.importorskip("polars")
    pl = polars.read_parquet(str(tmp_path / "run" / "stats" / "*.parquet"))
    assert pl.height == n
    duckdb = pytest.importorskip("duckdb")
    glob = str(tmp_path / "run" / "stats" / "*.parquet")
    query = f"select count(*), max(step) from '{glob}' where stat='grad_norm'"
    rows = duckdb.sql(query).fetchall()[0]
    assert rows == (10 * 2, 9)
    meta = json.loads((tmp_path / "run" / "meta.json").read_text())
    assert meta["format_version"] == 1 and meta["layers"] == ["0", "2"]


def test_watch_bad_input_gives_clear_errors(tmp_path):
    model = nn.Linear(3, 3)
    with pytest.raises(gw.GradwatchTypeError, match="model must be a torch.nn.Module"):
        gw.watch("not a model")
    with pytest.raises(gw.GradwatchValueError, match="model has no parameters"):
        gw.watch(nn.Sequential(nn.ReLU(), nn.Tanh()))
    with pytest.raises(gw.GradwatchValueError, match="every must be >= 1"):
        gw.watch(model, every=0)
    with pytest.raises(gw.GradwatchValueError, match="every must be"):
        gw.watch(model, every="sometimes")
    with pytest.raises(gw.GradwatchTypeError, match="optimizer must be"):
        gw.watch(model, optimizer="sgd")
    with pytest.raises(gw.GradwatchValueError, match="stats has unknown names"):
        gw.watch(model, stats=["grad_nrom"])
    with pytest.raises(gw.GradwatchValueError, match="detail_every"):
        gw.watch(model, detail_every=0)
    assert not model._forward_hooks


def test_second_writer_is_kept_out_and_nothing_is_lost(tmp_path):
    model = nn.Sequential(nn.Linear(3, 3), nn.Tanh(), nn.Linear(3, 1))
    mon = gw.watch(model, tmp_path / "run")
    for _ in range(4):
        model(torch.randn(2, 3)).sum().backward()
        mon.step()
    mon.flush()
    with pytest.raises(RunLockedError, match="held by another writer"):
        gw.watch(nn.Linear(2, 2), tmp_path / "run")
    for _ in range(2):
        model(torch.randn(2, 3)).sum().backward()
        mon.step()
    mon.close()
    assert gw.load(tmp_path / "run").steps == list(range(6))
    with pytest.raises(RunDirectoryError, match="overwrite=True"):
        gw.watch(model, tmp_path / "run")
    with gw.watch(model, tmp_path / "run", overwrite=True) as mon2:
        model(torch.randn(2, 3)).sum().backward()
        mon2.step()
    assert gw.load(tmp_path / "run").steps == [0]


def test_closed_monitor_refuses_steps():
    model = nn.Linear(3, 1)
    mon = gw.watch(model)
    mon.close()
    mon.close()  # idempotent
    with pytest.raises(gw.GradwatchValueError, match="closed"):
        mon.step()


def test_load_errors_are_clear(tmp_path):
    with pytest.raises(RunDirectoryError, match="does not exist"):
        gw.load(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(RunDirectoryError, match="not a gradwatch run"):
        gw.load(tmp_path / "empty")
    (tmp_path / "file").write_text("x")
    with pytest.raises(RunDirectoryError, match="is a file"):
        gw.load(tmp_path / "file")
    bad = tmp_path / "badmeta"
    bad.mkdir()
    (bad / "meta.json").write_text("{not json")
    with pytest.raises(RunDirectoryError, match="corrupt"):
        gw.load(bad)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "meta.json").write_text(json.dumps({"name": "something else"}))
    with pytest.raises(RunDirectoryError, match="format_version"):
        gw.load(foreign)
    newer = tmp_path / "newer"
    newer.mkdir()
    (newer / "meta.json").write_text(json.dumps({"format_version": 99}))
    with pytest.raises(RunDirectoryError, match="newer"):
        gw.load(newer)
    with pytest.raises(GradwatchError, match="run_dir must be a path"):
        gw.load(42)


def test_truncated_part_is_skipped_with_a_warning(tmp_path):
    model = nn.Linear(3, 1)
    with gw.watch(model, tmp_path / "run", flush_every=2) as mon:
        for _ in range(6):
            model(torch.randn(2, 3)).sum().backward()
            mon.step()
    parts = sorted((tmp_path / "run" / "stats").glob("*.parquet"))
    assert len(parts) == 1  # compacted at close
    os.truncate(parts[0], parts[0].stat().st_size // 2)
    with pytest.warns(RuntimeWarning, match="skipping unreadable part"):
        run = gw.load(tmp_path / "run")
    assert len(run.stats) == 0


def test_long_run_streams_to_disk_and_compacts(tmp_path):
    model = nn.Linear(2, 1)
    t0 = time.time()
    with gw.watch(model, tmp_path / "run", flush_every=1, activations=False) as mon:
        for _ in range(80):
            model(torch.randn(2, 2)).sum().backward()
            mon.step()
            assert len(mon._session.buffer) <= 1
    parts = list((tmp_path / "run" / "stats").glob("*.parquet"))
    assert len(parts) <= 3
    assert gw.load(tmp_path / "run").steps == list(range(80))
    assert time.time() - t0 < 30


SIGTERM_CHILD = textwrap.dedent(
    """
    import sys, torch, gradwatch as gw
    from torch import nn
    model = nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    mon = gw.watch(model, sys.argv[1], optimizer=opt, flush_every=10_000, flush_secs=1e9)
    step = 0
    while True:
        opt.zero_grad(); model(torch.randn(3, 4)).sum().backward(); opt.step()
        step += 1
        if step == 25:
            print("ready", flush=True)
    """
)


def test_sigterm_flushes_everything(tmp_path):
    script = tmp_path / "child.py"
    script.write_text(SIGTERM_CHILD)
    proc = subprocess.Popen([sys.executable, str(script), str(tmp_path / "run")],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 128 + signal.SIGTERM
    run = gw.load(tmp_path / "run")
    assert len(run.steps) >= 25 and run.steps == list(range(len(run.steps)))
    assert run.meta["status"] in ("closed", "interrupted")


def test_unwritable_run_directory_warns_and_training_goes_on(tmp_path):
    model = nn.Sequential(nn.Linear(3, 3), nn.ReLU(), nn.Linear(3, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    run_dir = tmp_path / "run"
    stats = run_dir / "stats"

    def train(mon, n):
        for _ in range(n):
            opt.zero_grad()
            loss = model(torch.randn(4, 3)).pow(2).mean()
            loss.backward()
            opt.step()
            mon.step(loss)

    with gw.watch(model, run_dir, optimizer=opt, flush_every=5, flush_secs=1e9) as mon:
        train(mon, 5)
        mon.flush(wait=True)
        written = gw.load(run_dir).steps
        assert written == list(range(5))
        moved = tmp_path / "stats-away"
        stats.rename(moved)
        stats.write_text("not a directory")  # every write into stats/ now fails
        with pytest.warns(RuntimeWarning, match="could not write statistics"):
            train(mon, 10)
            mon.flush(wait=True)
        stats.unlink()
        moved.rename(stats)  # the disk is back
        train(mon, 5)
    run = gw.load(run_dir)
    assert run.steps == list(range(20))  # the rows of the failed flushes were retried
