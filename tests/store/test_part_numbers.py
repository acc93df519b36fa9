"""Part numbers past 999,999: written, loaded, resumed and compacted like any other.

A long run with a short flush interval (or many resumed sessions) passes a million parts; the
part names then have seven digits or more, and nothing written after that may go missing.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import gradwatch as gw
from gradwatch.store.format import STATS_DIR, live_parts, part_name
from gradwatch.store.rundir import RunDirectory

from .test_rundir import finish, table


def _train(model, opt, mon, n):
    for _ in range(n):
        opt.zero_grad()
        loss = model(torch.randn(4, 3)).pow(2).mean()
        loss.backward()
        opt.step()
        mon.step(loss)


def test_part_names_past_six_digits_sort_and_parse():
    assert part_name(1_000_000) == "part-1000000.parquet"
    assert part_name(999_999, 1_000_002) == "part-999999-1000002.parquet"


def test_live_parts_read_seven_digit_parts_and_ranges(tmp_path):
    stats = tmp_path / STATS_DIR
    stats.mkdir()
    from gradwatch.store.writer import write_part

    for n in (999_998, 999_999, 1_000_000, 1_000_001, 1_000_002):
        write_part(stats / part_name(n), table([n - 999_998]))
    write_part(stats / part_name(999_999, 1_000_001), table([1, 2, 3]))
    names = [p.name for p in live_parts(stats)]
    # the range replaces the three singles it spans; the parts around it stay, in order
    assert names == ["part-999998.parquet", "part-999999-1000001.parquet",
                     "part-1000002.parquet"]


def test_resume_past_a_million_parts_continues_and_compacts(tmp_path):
    """A run whose last part is number 1,000,000: resume continues after its steps and parts;
    every step of both sessions loads, once, and nothing is counted lost."""
    run = tmp_path / "run"
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with gw.watch(model, run, optimizer=opt, flush_every=2, flush_secs=1e9) as mon:
        _train(model, opt, mon, 6)
    stats = run / STATS_DIR
    (part,) = stats.iterdir()  # compacted at close into one part
    part.rename(stats / part_name(1_000_000))  # as if a million flushes had gone before

    rd = RunDirectory.open(run, resume=True, layers=["0", "2"])
    assert (rd.first_step, rd.first_part, rd.steps_on_disk) == (6, 1_000_001, 6)
    rd.release()

    with gw.watch(model, run, optimizer=opt, flush_every=2, flush_secs=1e9, resume=True) as mon:
        assert mon.step_count == 6
        _train(model, opt, mon, 4)
        mid = mon.run  # flushed: the session's own single parts (1,000,001 and on) are read
        assert mid.steps == list(range(10))
        _train(model, opt, mon, 6)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loaded = gw.load(run)
    assert loaded.steps == list(range(16))
    assert not loaded.stats.duplicated(["step", "layer", "stat"]).any()
    assert loaded.loss().index.tolist() == list(range(16))
    assert loaded.meta["lost_rows"] == 0
    names = sorted(p.name for p in stats.iterdir())
    # the second session's parts were compacted into one range above a million
    assert len(names) == 2 and names[0] == "part-1000000.parquet"
    assert names[1].startswith("part-1000001-") and names[1] > "part-1000001-1000004"


@pytest.mark.parametrize("first", [999_999, 9_999_999])
def test_a_writer_crossing_a_digit_boundary_loses_nothing(tmp_path, first):
    rd = RunDirectory.open(tmp_path / "run", layers=["0"])
    rd.start(rd.meta({"format_version": 1, "layers": ["0"]}, "running"))
    from gradwatch.store.writer import write_part

    for i in range(3):
        write_part(tmp_path / "run" / STATS_DIR / part_name(first + i), table([i]))
    finish(rd)
    assert gw.load(tmp_path / "run").steps == [0, 1, 2]
    rd2 = RunDirectory.open(tmp_path / "run", resume=True, layers=["0"])
    assert (rd2.first_step, rd2.first_part) == (3, first + 3)
    finish(rd2)
