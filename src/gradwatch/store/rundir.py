"""The run directory's lifecycle: create, lock, overwrite, resume, meta, findings, finish.

A :class:`RunDirectory` is a run directory held by this process. The Monitor opens one,
writes ``meta.json`` through it while training runs and finishes it at close; diagnosing the
finished run is a callback handed in by the caller (the store never imports upward).

Statuses in ``meta.json``: "running" while a writer holds the directory (a run that still
says "running" but whose lock is gone or stale was killed: :func:`run_state` calls it
"crashed"), then "closed" (a normal close), "failed" (an exception ended training) or
"interrupted" (KeyboardInterrupt, SIGTERM, ``sys.exit``).

Faults: every write goes through :func:`gradwatch.store.safe_write.write_with` (never through a
symlink the run did not create). A small reserve file is kept while the run is open: when the
disk fills up, the final ``meta.json`` (with ``lost_rows``) is written into the space it frees.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import time
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from gradwatch.argcheck import check_path_length
from gradwatch.errors import GradwatchTypeError, GradwatchValueError, RunDirectoryError
from gradwatch.findings import Finding, checked_dict
from gradwatch.jsonable import jsonable
from gradwatch.store import lock as run_lock
from gradwatch.store.format import (
    FINDINGS,
    FORMAT_VERSION,
    META,
    STATS_DIR,
    is_real_dir,
    live_parts,
    part_numbers,
    remove_entry,
)
from gradwatch.store.safe_write import write_bytes_atomic, write_json_atomic

RUNNING, CLOSED, FAILED, INTERRUPTED, CRASHED = (
    "running", "closed", "failed", "interrupted", "crashed"
)
FINAL_STATUSES = (CLOSED, FAILED, INTERRUPTED)
RESERVE = ".gradwatch.reserve"
RESERVE_BYTES = 256 * 1024

Diagnose = Callable[[Path], Iterable[Finding]]
"""Diagnosis at close: run directory -> the findings to store in ``findings.jsonl``."""


class RunDirectory:
    """A run directory held by this process (its lock taken).

    Create it with :meth:`open`. Attributes set there:

    Attributes:
        path: the directory.
        first_step: the first step this session records (0, or after the steps on disk
            when resuming).
        first_part: the number of the first Parquet part this session writes.
        steps_on_disk: number of distinct steps already on disk (resuming), else 0.
        previous: the meta.json of the run resumed, or None.
    """

    def __init__(self, path: Path):
        self.path = path
        self.first_step = 0
        self.first_part = 0
        self.steps_on_disk = 0
        self.previous: dict[str, Any] | None = None
        self._lock: Path | None = None
        self._session = {
            "started": time.time(),
            "ended": None,
            "first_step": 0,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "status": RUNNING,
        }
        self.meta_error: OSError | None = None  # the last failed meta.json write

    # ----------------------------------------------------------------------------- open
    @classmethod
    def open(
        cls,
        run_dir: str | Path,
        *,
        overwrite: bool = False,
        resume: bool = False,
        layers: list[str] | None = None,
    ) -> RunDirectory:
        """Create (or resume) a run directory and take its lock.

        Args:
            run_dir: the directory; created with its parents if missing.
            overwrite: replace a run already there (everything it holds is removed;
                symlinks are removed, never their targets).
            resume: continue the run already there (closed or crashed) from the step after
                its last step on disk; a missing or empty directory starts a new run.
            layers: the layer names of the model about to be watched; with ``resume`` they
                must be those of the run on disk.

        Raises:
            GradwatchTypeError: ``run_dir`` is not a path.
            GradwatchValueError: ``run_dir`` is empty, or both overwrite and resume are set,
                or the resumed run has other layers.
            RunDirectoryError: ``run_dir`` is a file, holds a run (without overwrite or
                resume), cannot be created or written.
            RunLockedError: a live writer holds the directory.
        """
        path = check_run_dir(run_dir)
        for arg, val in (("overwrite", overwrite), ("resume", resume)):
            if not isinstance(val, bool):
                raise GradwatchTypeError(f"{arg} must be True or False, got {val!r}")
        if overwrite and resume:
            raise GradwatchValueError(
                "overwrite=True and resume=True contradict each other: resume continues the "
                "run in run_dir, overwrite deletes it; pass one of them"
            )
        if path.exists() and not path.is_dir():
            raise RunDirectoryError(
                f"run_dir {str(path)!r} exists and is not a directory; pass a directory path"
            )
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RunDirectoryError(
                f"run_dir {str(path)!r} cannot be created ({exc.strerror or exc}); choose a "
                "writable location"
            ) from None
        rd = cls(path)
        rd._lock = run_lock.acquire(path)  # raises RunLockedError if a live writer holds it
        try:
            rd._prepare(overwrite, resume, layers)
        except BaseException:
            rd.release()
            raise
        return rd

    def _prepare(self, overwrite: bool, resume: bool, layers: list[str] | None) -> None:
        path = self.path
        holds_run = any(os.path.lexists(path / n) for n in (META, STATS_DIR, FINDINGS))
        if holds_run and resume:
            if not os.path.lexists(path / META):
                raise RunDirectoryError(
                    f"run_dir {str(path)!r}: cannot resume, it has no {META} (not a gradwatch "
                    "run); pass overwrite=True to start over there, or choose another run_dir"
                )
            self._resume(layers)
        elif holds_run and not overwrite:
            raise RunDirectoryError(
                f"run_dir {str(path)!r} already holds a run; choose a new run_dir, pass "
                "resume=True to continue it, or overwrite=True to replace it"
            )
        else:
            for name in (STATS_DIR, META, FINDINGS, f".{META}.tmp", f".{FINDINGS}.tmp"):
                remove_entry(path / name)
            (path / STATS_DIR).mkdir()
        _remove_leftovers(path)
        self._make_reserve()

    def _resume(self, layers: list[str] | None) -> None:
        path = self.path
        try:
            prev = json.loads((path / META).read_bytes().decode("utf-8"))
        except (OSError, ValueError) as exc:
            raise RunDirectoryError(
                f"run_dir {str(path)!r}: cannot resume, {META} is unreadable ({exc}); "
                "pass overwrite=True to start over, or choose another run_dir"
            ) from None
        if not isinstance(prev, dict) or prev.get("format_version") != FORMAT_VERSION:
            raise RunDirectoryError(
                f"run_dir {str(path)!r}: cannot resume, {META} is not a run of format "
                f"{FORMAT_VERSION}; pass overwrite=True to start over, or choose another run_dir"
            )
        if layers is not None and prev.get("layers") is not None:
            if sorted(prev["layers"]) != sorted(layers):
                raise GradwatchValueError(
                    f"resume=True: the model's layers differ from those of the run in "
                    f"{str(path)!r} ({len(layers)} here, {len(prev['layers'])} there); watch "
                    "the same model, or start a new run_dir"
                )
        stats = path / STATS_DIR
        if os.path.lexists(stats) and not is_real_dir(stats):
            link = stats.is_symlink()
            fix = ("move the folder it points to into its place (its steps are then resumed)"
                   if link else "remove it if it holds no steps of this run")
            raise RunDirectoryError(
                f"run_dir {str(path)!r}: cannot resume: {STATS_DIR} is a "
                f"{'symlink' if link else 'file'}, not the run's own folder, and gradwatch does "
                f"not resume through one; {fix}, or pass overwrite=True to start over"
            )
        if not os.path.lexists(stats):
            stats.mkdir()
        steps, top_part = _steps_on_disk(stats)
        self.previous = prev
        self.steps_on_disk = len(steps)
        self.first_step = (max(steps) + 1) if steps else 0
        self.first_part = top_part + 1
        self._session["first_step"] = self.first_step

    # ----------------------------------------------------------------------------- meta
    def meta(self, body: dict[str, Any], status: str, **extra: Any) -> dict[str, Any]:
        """The meta.json of this run: ``body`` (the Monitor's) plus status and sessions."""
        self._session["status"] = status
        if status != RUNNING:
            self._session["ended"] = time.time()
        sessions = [dict(x) for x in (self.previous or {}).get("sessions") or []]
        if self.previous is not None and not sessions:  # a run written before sessions
            sessions = [{"started": self.previous.get("started"),
                         "status": self.previous.get("status"), "first_step": 0}]
        if sessions and sessions[-1].get("status") == RUNNING:
            sessions[-1]["status"] = CRASHED  # resumed after its writer died
        meta = dict(body)
        meta["status"] = status
        meta["sessions"] = sessions + [dict(self._session)]
        meta["resumed"] = self.previous is not None
        if self.previous is not None:
            meta["started"] = self.previous.get("started", meta.get("started"))
        meta.update(extra)
        return meta

    def write_meta(self, meta: dict[str, Any], *, last: bool = False) -> bool:
        """Write ``meta.json`` atomically.

        Args:
            meta: the whole meta dict (see :meth:`meta`).
            last: the final write: on a full disk, the reserve is given up to make room.

        Returns:
            True if written; False if the write failed (the error is in ``meta_error``).
        """
        try:
            write_json_atomic(self.path / META, meta)
        except OSError as exc:
            if not (last and exc.errno == errno.ENOSPC and self._drop_reserve()):
                self.meta_error = exc
                return False
            try:
                write_json_atomic(self.path / META, meta)
            except OSError as exc2:
                self.meta_error = exc2
                return False
        self.meta_error = None
        return True

    def write_findings(self, findings: Iterable[Finding]) -> None:
        """Replace ``findings.jsonl`` with one ``Finding.to_dict()`` per line (atomically)."""
        lines = "".join(
            json.dumps(jsonable(checked_dict(f)), allow_nan=False) + "\n" for f in findings
        )
        write_bytes_atomic(self.path / FINDINGS, lines.encode("utf-8"))

    def start(self, meta: dict[str, Any]) -> None:
        """Write the first meta.json ("running") and an empty findings file if none exists.

        Raises:
            RunDirectoryError: the directory cannot be written (nothing was started).
        """
        try:
            write_json_atomic(self.path / META, meta)
            if self.previous is None or not os.path.lexists(self.path / FINDINGS):
                write_bytes_atomic(self.path / FINDINGS, b"")
        except OSError as exc:
            self.release()
            raise RunDirectoryError(
                f"run_dir {str(self.path)!r} cannot be written ({exc.strerror or exc}); free "
                "space or make it writable, then try again"
            ) from None

    def finish(self, meta: dict[str, Any], diagnose: Diagnose | None = None) -> bool:
        """Write the final meta.json, diagnose (if given) and release the lock.

        Args:
            meta: the final meta (status closed, failed or interrupted).
            diagnose: called with the run directory; returns the findings to store. A
                failure there is reported as a warning and never loses the run.

        Returns:
            whether the final meta.json was written.
        """
        try:
            ok = self.write_meta(meta, last=True)
            if ok and diagnose is not None:
                try:
                    self.write_findings(diagnose(self.path))
                    meta["diagnosed"] = True
                    self.write_meta(meta, last=True)
                except Exception as exc:  # noqa: BLE001 - a diagnosis bug must not lose the run
                    warnings.warn(
                        f"gradwatch: the run in {self.path} is complete, but diagnosing it "
                        f"failed ({exc!r}); run gw.diagnose on it later",
                        RuntimeWarning,
                        stacklevel=4,
                    )
            return ok
        finally:
            self._drop_reserve()
            self.release()

    def release(self) -> None:
        """Release the lock (idempotent)."""
        if self._lock is not None:
            run_lock.release(self._lock)
            self._lock = None

    # -------------------------------------------------------------------------- reserve
    def _make_reserve(self) -> None:
        try:
            write_bytes_atomic(self.path / RESERVE, bytes(RESERVE_BYTES))
        except OSError:
            pass  # no room for a reserve: the final meta may then not fit either

    def _drop_reserve(self) -> bool:
        try:
            os.unlink(self.path / RESERVE)
        except OSError:
            return False
        return True


def check_run_dir(run_dir: Any) -> Path:
    """Validate a ``run_dir`` argument and return it as a Path.

    Raises:
        GradwatchTypeError: not a str or Path.
        GradwatchValueError: an empty string (which would write into the current folder).
    """
    if isinstance(run_dir, bytes) or not isinstance(run_dir, str | os.PathLike):
        raise GradwatchTypeError(
            f"run_dir must be a path (str or pathlib.Path) or None, got "
            f"{type(run_dir).__name__}; pass e.g. run_dir='runs/a'"
        )
    text = os.fspath(run_dir)
    if not isinstance(text, str) or not text.strip():
        raise GradwatchValueError(
            "run_dir must not be empty (it would write into the current folder); pass a "
            "directory name such as 'runs/a', or None to keep the run in memory"
        )
    if "\0" in text:
        raise GradwatchValueError("run_dir contains a NUL character; pass a valid path")
    check_path_length("run_dir", text)
    return Path(text)


def run_state(run_dir: str | Path) -> str:
    """The state of a run directory for listings: its meta status, or "crashed".

    A run whose meta.json says "running" while no live writer holds its lock (the lock is
    missing, stale or malformed) was killed: it is "crashed" (resume it with
    ``gw.watch(..., resume=True)``).

    Raises:
        RunDirectoryError: no readable meta.json.
    """
    path = Path(run_dir)
    try:
        meta = json.loads((path / META).read_bytes().decode("utf-8"))
        status = meta["status"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise RunDirectoryError(f"run_dir {str(path)!r}: no readable {META} ({exc})") from None
    if status == RUNNING:
        info = run_lock.read_lock(path)
        if info is None or info.stale:
            return CRASHED
    return str(status)


def _steps_on_disk(stats: Path) -> tuple[list[int], int]:
    """Distinct steps in the live parts, and the highest part number present (-1 if none)."""
    top = -1
    for f in stats.iterdir():
        nums = part_numbers(f.name)
        if nums is not None:
            top = max(top, nums[1])
    steps: set[int] = set()
    for part in live_parts(stats):
        try:
            col = pq.read_table(part, columns=["step"]).column("step")
        except Exception as exc:  # noqa: BLE001 - pyarrow raises several kinds
            warnings.warn(f"resume: skipping unreadable part {part} ({exc})", RuntimeWarning,
                          stacklevel=4)
            continue
        steps.update(col.unique().to_pylist())
    return sorted(steps), top


def _remove_leftovers(path: Path) -> None:
    """Remove temporary files a killed writer may have left (ours only: hidden .tmp names)."""
    for d in (path, path / STATS_DIR):
        if not is_real_dir(d):
            continue
        for f in d.iterdir():
            if (f.name.startswith(".") and f.name.endswith(".tmp") and not f.is_dir()
                    and not f.name.startswith(".gradwatch.lock")):  # another taker's, in flight
                try:
                    os.unlink(f)
                except OSError:
                    pass
