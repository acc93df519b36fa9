"""One writer per run directory: a lock file holding the writer's pid and host."""

from __future__ import annotations

import json
import os
import socket
import time
import warnings
from pathlib import Path

from gradwatch.errors import RunLockedError
from gradwatch.store.format import LOCK


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def acquire(run_dir: Path) -> Path:
    """Create the lock file in ``run_dir``; raise :class:`RunLockedError` if a live writer holds it.

    A lock left by a process of this host that no longer runs (a killed training) is stale and
    is taken over with a warning.
    """
    path = run_dir / LOCK
    me = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                holder = json.loads(path.read_text() or "{}")
            except (OSError, ValueError):
                holder = {}
            pid, host = holder.get("pid"), holder.get("host")
            if host == me["host"] and isinstance(pid, int) and not _alive(pid):
                warnings.warn(
                    f"run_dir {run_dir}: taking over a stale lock left by pid {pid}, "
                    "which no longer runs",
                    RuntimeWarning,
                    stacklevel=3,
                )
                path.unlink(missing_ok=True)
                continue
            raise RunLockedError(
                f"run_dir {str(run_dir)!r} is held by another writer (pid {pid} on host "
                f"{host}); choose another run_dir, or stop that process first"
            ) from None
        with os.fdopen(fd, "w") as fh:
            json.dump(me, fh)
        return path
    raise RunLockedError(f"run_dir {str(run_dir)!r}: could not take the lock")  # pragma: no cover


def release(path: Path) -> None:
    """Remove the lock file if this process holds it."""
    try:
        holder = json.loads(path.read_text() or "{}")
        if holder.get("pid") == os.getpid():
            path.unlink()
    except (OSError, ValueError):
        pass
