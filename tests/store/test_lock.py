"""The run directory's lock: one live writer, stale and malformed locks taken over."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap

import pytest

from gradwatch.errors import RunLockedError
from gradwatch.store import lock
from gradwatch.store.format import LOCK


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_read_lock_reports_holder_and_liveness(tmp_path):
    assert lock.read_lock(tmp_path) is None
    path = lock.acquire(tmp_path)
    info = lock.read_lock(tmp_path)
    assert (info.pid, info.host, info.alive, info.problem) == (
        os.getpid(), socket.gethostname(), True, None)
    assert not info.stale and "running" in info.describe()
    assert lock.release(path) and lock.read_lock(tmp_path) is None
    # no temporary file is left next to the lock
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_live_writer_in_another_process_keeps_the_directory(tmp_path):
    code = textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        from gradwatch.store import lock
        lock.acquire(Path({str(tmp_path)!r}))
        print("held", flush=True)
        sys.stdin.readline()
    """)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout.readline().strip() == "held"
        info = lock.read_lock(tmp_path)
        assert info.pid == proc.pid and info.alive is True
        with pytest.raises(RunLockedError, match=f"pid {proc.pid} on host .*running"):
            lock.acquire(tmp_path)
    finally:
        proc.communicate("\n", timeout=30)
    # the writer exited without releasing (killed, in effect): the lock is now stale
    info = lock.read_lock(tmp_path)
    assert info.pid == proc.pid and info.alive is False and info.stale
    with pytest.warns(RuntimeWarning, match=f"stale lock: found pid {proc.pid}.*no longer"):
        lock.acquire(tmp_path)
    assert lock.read_lock(tmp_path).pid == os.getpid()


@pytest.mark.parametrize(
    ("content", "found"),
    [
        (b"", "an empty lock file"),
        (b"{not json", "not JSON"),
        (b"\xff\xfe\x00", "not JSON"),
        (b"[1, 2]", "not a JSON object"),
        (json.dumps({"pid": None, "host": None}).encode(), "without a valid pid"),
        (json.dumps({"pid": "12", "host": "h"}).encode(), "without a valid pid"),
    ],
)
def test_a_malformed_lock_is_taken_over_naming_what_was_found(tmp_path, content, found):
    (tmp_path / LOCK).write_bytes(content)
    info = lock.read_lock(tmp_path)
    assert info.stale and info.alive is None and found in info.problem
    with pytest.warns(RuntimeWarning, match=f"stale lock: found .*{found}"):
        path = lock.acquire(tmp_path)
    assert lock.read_lock(tmp_path).pid == os.getpid()
    lock.release(path)


def test_dead_writer_on_this_host_is_stale_other_host_is_kept(tmp_path):
    pid = dead_pid()
    (tmp_path / LOCK).write_text(json.dumps({"pid": pid, "host": socket.gethostname()}))
    assert lock.read_lock(tmp_path).alive is False
    with pytest.warns(RuntimeWarning, match=f"pid {pid}"):
        lock.release(lock.acquire(tmp_path))
    # a writer on another host cannot be checked: it keeps the directory
    (tmp_path / LOCK).write_text(json.dumps({"pid": pid, "host": "elsewhere.invalid"}))
    info = lock.read_lock(tmp_path)
    assert info.alive is None and not info.stale
    with pytest.raises(RunLockedError, match="elsewhere.invalid, state unknown"):
        lock.acquire(tmp_path)


def test_a_symlinked_lock_is_never_followed(tmp_path):
    target = tmp_path / "precious.txt"
    target.write_text("keep me")
    run = tmp_path / "run"
    run.mkdir()
    (run / LOCK).symlink_to(target)
    info = lock.read_lock(run)
    assert info.stale and "symlink" in info.problem
    with pytest.warns(RuntimeWarning, match="symlink"):
        path = lock.acquire(run)
    assert not path.is_symlink() and json.loads(path.read_text())["pid"] == os.getpid()
    assert target.read_text() == "keep me"
    lock.release(path)
    assert target.read_text() == "keep me"


def test_a_lock_that_is_a_directory_is_refused_and_left_alone(tmp_path):
    """Something that is not a file at the lock's name was not written by gradwatch: the
    directory is neither taken over nor renamed, and the error names it and the fix."""
    import gradwatch as gw
    from gradwatch.errors import RunDirectoryError

    run = tmp_path / "run"
    (run / LOCK).mkdir(parents=True)
    (run / LOCK / "inside.txt").write_text("someone's")
    info = lock.read_lock(run)
    assert info.stale and "directory" in info.problem
    with pytest.raises(RunDirectoryError, match=r"\.gradwatch\.lock is a directory.*remove it"):
        lock.acquire(run)
    with pytest.raises(RunDirectoryError, match="is a directory"):
        gw.watch(nn_linear(), run)
    assert sorted(p.name for p in run.iterdir()) == [LOCK]
    assert (run / LOCK / "inside.txt").read_text() == "someone's"


def nn_linear():
    from torch import nn

    return nn.Linear(2, 2)
