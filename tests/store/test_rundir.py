"""The run directory's lifecycle: hostile directories, full and read-only disks, states."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import pyarrow as pa
import pytest

from gradwatch.errors import (
    GradwatchTypeError,
    GradwatchValueError,
    RunDirectoryError,
    RunLockedError,
)
from gradwatch.store import lock
from gradwatch.store.format import FINDINGS, LOCK, META, STATS_DIR
from gradwatch.store.rundir import RESERVE, RunDirectory, check_run_dir, run_state
from gradwatch.store.writer import write_part

from .tinyfs import tiny_fs


def table(steps):
    return pa.table({"step": pa.array(steps, pa.int64()), "layer": ["0"] * len(steps),
                     "stat": ["grad_norm"] * len(steps),
                     "value": pa.array([1.0] * len(steps), pa.float32())})


def finish(rd, status="closed"):
    assert rd.finish(rd.meta({"format_version": 1, "layers": ["0"]}, status))


def test_overwrite_removes_symlinks_not_their_targets(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    write_part(elsewhere / "part-000000.parquet", table([0, 1, 2]))
    precious = tmp_path / "precious.json"
    precious.write_text('{"keep": true}')
    run = tmp_path / "run"
    run.mkdir()
    (run / STATS_DIR).symlink_to(elsewhere)  # the old run's parts live elsewhere
    (run / META).symlink_to(precious)
    (run / FINDINGS).symlink_to(precious)
    with pytest.raises(RunDirectoryError, match="already holds a run"):
        RunDirectory.open(run)
    rd = RunDirectory.open(run, overwrite=True)
    assert (run / STATS_DIR).is_dir() and not (run / STATS_DIR).is_symlink()
    assert list((run / STATS_DIR).iterdir()) == []  # the previous run's steps are gone
    assert [p.name for p in elsewhere.iterdir()] == ["part-000000.parquet"]  # target kept
    rd.start(rd.meta({"format_version": 1}, "running"))
    finish(rd)
    assert precious.read_text() == '{"keep": true}'
    assert not (run / META).is_symlink() and json.loads((run / META).read_text())["status"] == (
        "closed")


@pytest.mark.parametrize("planted", [f".{META}.tmp", f".{FINDINGS}.tmp", META, FINDINGS])
def test_no_write_follows_a_planted_symlink(tmp_path, planted):
    precious = tmp_path / "precious.txt"
    precious.write_text("keep me")
    run = tmp_path / "run"
    rd = RunDirectory.open(run)
    rd.start(rd.meta({"format_version": 1}, "running"))
    (run / planted).unlink(missing_ok=True)
    (run / planted).symlink_to(precious)  # planted while the run is open
    assert rd.write_meta(rd.meta({"format_version": 1}, "running"))
    rd.write_findings([])
    finish(rd)
    assert precious.read_text() == "keep me"
    assert not any(p.is_symlink() for p in run.iterdir() if p.name in (META, FINDINGS))


def test_a_planted_part_symlink_is_replaced_not_followed(tmp_path):
    precious = tmp_path / "precious.txt"
    precious.write_text("keep me")
    stats = tmp_path / "stats"
    stats.mkdir()
    (stats / ".part-000000.parquet.tmp").symlink_to(precious)
    (stats / "part-000000.parquet").symlink_to(precious)
    write_part(stats / "part-000000.parquet", table([0]))
    assert precious.read_text() == "keep me"
    assert not (stats / "part-000000.parquet").is_symlink()
    assert not (stats / ".part-000000.parquet.tmp").exists()


def test_run_dir_argument_is_checked():
    with pytest.raises(GradwatchValueError, match="run_dir must not be empty.*current folder"):
        check_run_dir("")
    with pytest.raises(GradwatchTypeError, match="run_dir must be a path.*got int"):
        check_run_dir(123)
    with pytest.raises(GradwatchTypeError, match="got bytes"):
        check_run_dir(b"runs/a")
    assert check_run_dir("runs/a") == Path("runs/a")


def test_resume_and_overwrite_together_are_refused(tmp_path):
    with pytest.raises(GradwatchValueError, match="overwrite=True and resume=True"):
        RunDirectory.open(tmp_path / "run", overwrite=True, resume=True)
    assert not (tmp_path / "run").exists()


def test_resume_continues_after_the_last_step_on_disk(tmp_path):
    run = tmp_path / "run"
    rd = RunDirectory.open(run, layers=["0"])
    rd.start(rd.meta({"format_version": 1, "layers": ["0"]}, "running"))
    write_part(run / STATS_DIR / "part-000000-000003.parquet", table([0, 1, 2]))
    write_part(run / STATS_DIR / "part-000004.parquet", table([3, 4]))
    rd.release()  # the writer is gone; meta still says "running"
    assert run_state(run) == "crashed"
    with pytest.raises(GradwatchValueError, match="layers differ"):
        RunDirectory.open(run, resume=True, layers=["0", "1"])
    rd2 = RunDirectory.open(run, resume=True, layers=["0"])
    assert (rd2.first_step, rd2.first_part, rd2.steps_on_disk) == (5, 5, 5)
    assert run_state(run) == "running"
    with pytest.raises(RunLockedError):
        RunDirectory.open(run, resume=True)
    finish(rd2)
    meta = json.loads((run / META).read_text())
    assert [s["status"] for s in meta["sessions"]] == ["crashed", "closed"]
    assert [s["first_step"] for s in meta["sessions"]] == [0, 5] and meta["resumed"] is True
    assert run_state(run) == "closed"
    assert not (run / RESERVE).exists() and not (run / LOCK).exists()


def test_full_disk_at_start_leaves_no_lock_and_recovers(tmp_path):
    with tiny_fs("1m") as fs:
        run = fs.path / "run"
        run.mkdir()
        fs.fill()
        with pytest.raises(RunDirectoryError, match="cannot write the lock file.*free space"):
            RunDirectory.open(run)
        assert sorted(p.name for p in run.iterdir()) == []  # no 0-byte lock left
        fs.free()
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # nothing stale to take over
            rd = RunDirectory.open(run)
        rd.start(rd.meta({"format_version": 1}, "running"))
        finish(rd)


def test_full_disk_at_close_still_records_the_final_meta(tmp_path):
    with tiny_fs("2m") as fs:
        run = fs.path / "run"
        rd = RunDirectory.open(run)
        rd.start(rd.meta({"format_version": 1}, "running"))
        fs.fill()
        big = {"format_version": 1, "pad": "x" * 20_000}
        assert not rd.write_meta(rd.meta(big, "running"))  # a plain write fails
        assert rd.meta_error.errno == 28 and not (run / f".{META}.tmp").exists()
        assert rd.finish(rd.meta(big, "failed", lost_rows=123))  # the reserve makes room
        meta = json.loads((run / META).read_text())
        assert meta["status"] == "failed" and meta["lost_rows"] == 123
        assert not (run / LOCK).exists()
        fs.free()


def test_read_only_disk_keeps_the_lock_and_a_later_writer_takes_it_over(tmp_path):
    with tiny_fs("1m") as fs:
        run = fs.path / "run"
        rd = RunDirectory.open(run)
        rd.start(rd.meta({"format_version": 1}, "running"))
        fs.readonly()
        assert not rd.finish(rd.meta({"format_version": 1}, "closed"))
        assert isinstance(rd.meta_error, OSError)
        assert (run / LOCK).exists() and lock.read_lock(run).stale  # left, but not held
        assert run_state(run) == "crashed"
        fs.writable()
        with pytest.warns(RuntimeWarning, match=f"stale lock: found pid {os.getpid()}"):
            rd2 = RunDirectory.open(run, resume=True)
        finish(rd2)
        assert run_state(run) == "closed"


@pytest.mark.parametrize("what", ["symlink", "file"])
def test_resume_refuses_a_stats_folder_that_is_not_a_folder_of_the_run(tmp_path, what):
    """Resuming used to drop a stats/ that is a link (or a file) and start again at step 0,
    as if the steps behind it did not exist. Now it says so and leaves everything in place."""
    run = tmp_path / "run"
    rd = RunDirectory.open(run, layers=["0"])
    rd.start(rd.meta({"format_version": 1, "layers": ["0"]}, "running"))
    write_part(run / STATS_DIR / "part-000000.parquet", table([0, 1, 2]))
    finish(rd)
    moved = tmp_path / "elsewhere"
    (run / STATS_DIR).rename(moved)
    if what == "symlink":
        (run / STATS_DIR).symlink_to(moved)
    else:
        (run / STATS_DIR).write_text("not a folder")
    with pytest.raises(RunDirectoryError, match=f"cannot resume: stats is a {what}.*overwrite"):
        RunDirectory.open(run, resume=True, layers=["0"])
    assert (run / STATS_DIR).is_symlink() == (what == "symlink")
    assert [p.name for p in moved.iterdir()] == ["part-000000.parquet"]
    assert run_state(run) == "closed" and not (run / LOCK).exists()
