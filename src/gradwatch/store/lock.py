"""One writer per run directory: a lock file holding the writer's pid, host and start time.

The lock is written complete under a temporary name and then hard-linked to
``.gradwatch.lock`` (a link fails if the name exists), so a lock file is never seen half
written: an empty or unreadable lock is left by something else (a crash on a full disk, an
older gradwatch, a person) and is taken over with a warning that says what was found. A lock
of a process of this host that no longer runs is stale and taken over the same way. A live
writer, or one on another host (whose liveness cannot be checked), keeps the directory.

:func:`read_lock` is the read side, used by ``gradwatch runs`` to show a run whose writer died
as "crashed".
"""

from __future__ import annotations

import errno
import json
import os
import socket
import stat
import time
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path

from gradwatch.errors import RunDirectoryError, RunLockedError
from gradwatch.store.format import LOCK

# lock files this process holds (absolute paths): a lock naming this pid that is not here
# was left by a Monitor of this process that could not remove it (a read-only disk)
_HELD: set[str] = set()


@dataclass(frozen=True)
class LockInfo:
    """What a run directory's lock file says about its writer.

    Attributes:
        pid: the writer's process id (None if the lock is malformed).
        host: the writer's host name (None if the lock is malformed).
        since: when the writer took the lock (seconds since the epoch), or None.
        alive: True if the writer still runs, False if it is gone, None if that cannot be
            told (a writer on another host, or a malformed lock).
        problem: None for a well-formed lock; otherwise what was found ("an empty lock
            file", "unreadable JSON ...").
        foreign: the lock's name holds something gradwatch never writes there (a directory,
            a device): it is not taken over, and the directory cannot be written.
    """

    pid: int | None
    host: str | None
    since: float | None
    alive: bool | None
    problem: str | None = None
    foreign: bool = False

    @property
    def stale(self) -> bool:
        """Whether the lock can be taken over: malformed, or its writer is known dead."""
        return self.problem is not None or self.alive is False

    def describe(self) -> str:
        """One phrase naming the holder, for messages."""
        if self.problem is not None:
            return self.problem
        state = {True: "running", False: "no longer running", None: "state unknown"}[self.alive]
        return f"pid {self.pid} on host {self.host}, {state}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OverflowError:  # a pid no system has
        return False
    return True


def _parse(raw: bytes, path: Path) -> LockInfo:
    if not raw.strip():
        return LockInfo(None, None, None, None, "an empty lock file")
    try:
        holder = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return LockInfo(None, None, None, None, f"a lock file that is not JSON ({len(raw)} bytes)")
    if not isinstance(holder, dict):
        return LockInfo(None, None, None, None, "a lock file that is not a JSON object")
    pid, host, since = holder.get("pid"), holder.get("host"), holder.get("since")
    if isinstance(pid, bool) or not isinstance(pid, int) or pid <= 0 or not isinstance(host, str):
        return LockInfo(None, None, None, None, f"a lock file without a valid pid and host "
                        f"({raw[:80].decode('utf-8', 'replace')!r})")
    since = float(since) if isinstance(since, int | float) and not isinstance(since, bool) else None
    if host != socket.gethostname():
        alive = None
    elif pid == os.getpid():
        alive = str(path.absolute()) in _HELD
    else:
        alive = _alive(pid)
    return LockInfo(pid, host, since, alive)


def read_lock(run_dir: str | Path) -> LockInfo | None:
    """Read the lock of ``run_dir``: None if no writer holds it (no lock file).

    Args:
        run_dir: a run directory.

    Returns:
        a :class:`LockInfo`, or None when there is no lock file. A lock file that is a
        symlink or not a regular file is reported as malformed.
    """
    path = Path(run_dir) / LOCK
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return LockInfo(None, None, None, None, "a lock file that is a symlink")
        return LockInfo(None, None, None, None, f"an unreadable lock file ({exc.strerror})")
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        what = "a directory" if stat.S_ISDIR(mode) else "not a regular file"
        return LockInfo(None, None, None, None, f"a lock that is {what}", foreign=True)
    try:
        with os.fdopen(fd, "rb") as fh:
            raw = fh.read(4096)
    except OSError as exc:
        return LockInfo(None, None, None, None, f"an unreadable lock file ({exc.strerror})")
    return _parse(raw, path)


def acquire(run_dir: Path) -> Path:
    """Take the lock of ``run_dir`` for this process.

    A stale lock (its writer is gone, or the file is empty or malformed) is taken over with
    a warning naming what was found.

    Returns:
        the lock file's path (pass it to :func:`release`).

    Raises:
        RunLockedError: a live writer (or one on another host) holds the directory.
        RunDirectoryError: the lock cannot be written (full disk, read-only directory).
    """
    path = run_dir / LOCK
    me = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}
    for _ in range(3):
        if _link_new(run_dir, path, me):
            _HELD.add(str(path.absolute()))
            return path
        info = read_lock(run_dir)
        if info is None:  # released in between: try again
            continue
        if info.foreign:
            what = (info.problem or "").removeprefix("a lock that is ")
            raise RunDirectoryError(
                f"run_dir {str(run_dir)!r}: {LOCK} is {what}, which gradwatch never writes "
                f"there; remove it (rm -r {str(path)!r}) if nothing else uses it, or choose "
                "another run_dir"
            )
        if not info.stale:
            raise RunLockedError(
                f"run_dir {str(run_dir)!r} is held by another writer ({info.describe()}); "
                "choose another run_dir, or stop that process first"
            )
        if _remove_stale(run_dir, path, info):
            warnings.warn(
                f"run_dir {run_dir}: taking over a stale lock: found {info.describe()}",
                RuntimeWarning,
                stacklevel=3,
            )
    raise RunLockedError(
        f"run_dir {str(run_dir)!r}: could not take the lock (another process keeps taking "
        "it); stop the other writer or choose another run_dir"
    )


def _link_new(run_dir: Path, path: Path, me: dict) -> bool:
    """Write our lock under a unique name and link it into place; False if a lock exists."""
    tmp = run_dir / f".gradwatch.lock.{uuid.uuid4().hex}.tmp"
    try:
        fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW, 0o644)
        try:
            os.write(fd, (json.dumps(me) + "\n").encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path, follow_symlinks=False)
        except FileExistsError:
            return False
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP):
                raise
            return _create_exclusive(path, me)  # a filesystem without hard links
        return True
    except OSError as exc:
        raise RunDirectoryError(
            f"run_dir {str(run_dir)!r}: cannot write the lock file ({exc.strerror or exc}); "
            "free space on that disk or make the directory writable, then try again"
        ) from None
    finally:
        try:
            os.unlink(tmp)
        except OSError:
            pass


def _create_exclusive(path: Path, me: dict) -> bool:
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW, 0o644)
    except FileExistsError:
        return False
    try:
        os.write(fd, (json.dumps(me) + "\n").encode())
    except OSError:
        os.close(fd)
        os.unlink(path)
        raise
    os.close(fd)
    return True


def _remove_stale(run_dir: Path, path: Path, seen: LockInfo) -> bool:
    """Move the stale lock aside and delete it, unless another process replaced it meanwhile."""
    aside = run_dir / f".gradwatch.lock.{uuid.uuid4().hex}.stale"
    try:
        os.rename(path, aside)  # atomic: of two processes taking over, one moves it
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise RunDirectoryError(
            f"run_dir {str(run_dir)!r}: cannot remove the stale lock ({exc.strerror}); "
            "make the directory writable, then try again"
        ) from None
    now = read_lock_file(aside)
    if now != seen and not now.stale:  # a live writer took it in between: put it back
        try:
            os.link(aside, path, follow_symlinks=False)
        except OSError:
            pass
        os.unlink(aside)
        return False
    os.unlink(aside)
    return True


def read_lock_file(path: Path) -> LockInfo:
    """Parse one lock file (any name); a missing file reads as an empty lock."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return LockInfo(None, None, None, None, "an empty lock file")
    with os.fdopen(fd, "rb") as fh:
        return _parse(fh.read(4096), Path(path).with_name(LOCK))


def release(path: Path) -> bool:
    """Remove the lock file if this process holds it.

    Returns:
        True if the lock is gone, False if it could not be removed (a read-only disk): a
        later writer of this process takes it over.
    """
    key = str(path.absolute())
    info = read_lock(path.parent)
    if info is None or info.pid != os.getpid():
        _HELD.discard(key)
        return True
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError:
        _HELD.discard(key)  # left behind, but no longer held: stale for the next writer
        return False
    _HELD.discard(key)
    return True
