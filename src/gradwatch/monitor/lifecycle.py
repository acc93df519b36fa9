"""Run lifecycle of the Monitor: run directory, flush, close, status, atexit and SIGTERM.

The run directory itself (lock, meta.json, findings, resume) is a
:class:`~gradwatch.store.rundir.RunDirectory`; a :class:`RunSession` decides *when*: it holds
the blocks of recorded steps, flushes them to the background writer (under torch.distributed
through the ranks' collective), writes the final status, reports rows a write fault lost, and
never lets a failing rank enter a collective.

Statuses: "closed" after a normal close; "failed" when an exception ends training (inside
``with``, or escaping the program without it: an excepthook marks the open runs);
"interrupted" after KeyboardInterrupt, SIGTERM or ``sys.exit`` inside ``with``.
"""

from __future__ import annotations

import atexit
import contextlib
import signal
import sys
import threading
import warnings
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gradwatch.errors import DistributedFlushError
from gradwatch.handoff import set_diagnose_at_close
from gradwatch.store.rundir import (
    CLOSED,
    FAILED,
    INTERRUPTED,
    RUNNING,
    Diagnose,
    RunDirectory,
)
from gradwatch.store.writer import MAX_WAIT_SECS, Block, RunWriter

_LIVE: weakref.WeakSet[Any] = weakref.WeakSet()


def set_default_diagnose(fn: Diagnose | None) -> None:
    """Set how ``watch(..., diagnose=True)`` diagnoses a run at close.

    The diagnosis rules live above the Monitor, so the top-level package hands them down here
    (``gradwatch/__init__.py``); the Monitor never imports them.

    Args:
        fn: run directory -> findings to store in ``findings.jsonl``; None to diagnose nothing.
    """
    set_diagnose_at_close(fn)


@atexit.register
def _close_all() -> None:  # flush runs of a process that exits without closing them
    for mon in list(_LIVE):
        try:
            mon.close()
        except Exception:  # noqa: BLE001, S110 - never raise at exit
            pass


@contextlib.contextmanager
def standing_aside(model: torch.nn.Module) -> Iterator[None]:
    """The open Monitors watching (part of) ``model`` stand aside while the block runs.

    ``gw.check`` runs its own forward and backward pass on a model that may be watched, in
    the middle of a training step; the step's record must stay the training's alone. A
    Monitor of another model is left alone; Monitors created inside the block (the check's
    own) record as usual.
    """
    ids = {id(m) for m in model.modules()}
    mons = [m for m in list(_LIVE)
            if not m.closed and any(id(ly.module) in ids for ly in m.layers)]
    for m in mons:
        m._loop.stand_aside(True)
    try:
        yield
    finally:
        for m in mons:
            m._loop.stand_aside(False)


def _abnormal_end(status: str) -> None:
    """The process is ending on an exception or a signal: mark every open run."""
    for mon in list(_LIVE):
        if not mon.closed:
            mon.mark_ended(status)


_PREVIOUS_SIGTERM: Any = None
_PREVIOUS_EXCEPTHOOK: Any = None


def _on_sigterm(signum: int, frame: Any) -> None:
    """SIGTERM -> SystemExit, so ``with`` blocks and atexit flush the open runs."""
    _abnormal_end(INTERRUPTED)
    raise SystemExit(128 + signum)


def _excepthook(exc_type: type[BaseException], exc: BaseException, tb: Any) -> None:
    """An exception escapes the program: runs not closed by ``with`` end "failed".

    Python calls this before the atexit handlers, so the atexit close sees the status (and
    under torch.distributed skips the collective flush that the other ranks would never join).
    """
    _abnormal_end(INTERRUPTED if issubclass(exc_type, KeyboardInterrupt) else FAILED)
    (_PREVIOUS_EXCEPTHOOK or sys.__excepthook__)(exc_type, exc, tb)


def _install_excepthook() -> None:
    """Wrap ``sys.excepthook`` (once) so that open runs learn the program died."""
    global _PREVIOUS_EXCEPTHOOK
    if sys.excepthook is not _excepthook:
        _PREVIOUS_EXCEPTHOOK = sys.excepthook
        sys.excepthook = _excepthook


def _install_sigterm() -> None:
    """Flush on SIGTERM: only from the main thread and only if nobody else handles it."""
    global _PREVIOUS_SIGTERM
    if threading.current_thread() is not threading.main_thread() or _PREVIOUS_SIGTERM is not None:
        return
    try:
        if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
            signal.signal(signal.SIGTERM, _on_sigterm)
            _PREVIOUS_SIGTERM = signal.SIG_DFL
    except (ValueError, OSError):  # pragma: no cover - not in the main interpreter
        pass


def _restore_sigterm() -> None:
    global _PREVIOUS_SIGTERM
    if _PREVIOUS_SIGTERM is None or _LIVE:
        return
    if threading.current_thread() is not threading.main_thread():
        return
    try:
        if signal.getsignal(signal.SIGTERM) is _on_sigterm:
            signal.signal(signal.SIGTERM, _PREVIOUS_SIGTERM)
        _PREVIOUS_SIGTERM = None
    except (ValueError, OSError):  # pragma: no cover
        pass


class RunSession:
    """Where a Monitor's recorded steps go: the run directory, the writer and the flushes.

    Attributes:
        run_dir: the run directory on this rank (None in memory, and on ranks other than 0).
        status: the final status close() writes ("closed", "failed" or "interrupted").
        buffer: the blocks of recorded steps not flushed yet.
        first_step, steps_on_disk: where a resumed run continues.
    """

    def __init__(self, run_dir: Any, layout: Any, *, rank: int, dist: bool, process_group: Any,
                 overwrite: bool, resume: bool, live_sink: Any, max_pending_rows: int,
                 describe: Callable[[str], dict[str, Any]], diagnose: Diagnose | None):
        self.run_dir = Path(run_dir) if run_dir is not None and rank == 0 else None
        self.status = CLOSED
        self.buffer: list[Block] = []
        self.unsettled = False  # a flush handed to the writer may not be on disk yet
        self.dist, self.pg, self.rank = dist, process_group, rank
        self.describe, self.diagnose = describe, diagnose
        self.rundir: RunDirectory | None = None
        self.write_warned = False
        self.overdue_warned = False
        self.dropped_warned = 0
        self.diagnosed = False
        self.dist_broken = False  # a collective failed: no further collective from this rank
        self.uncombined_steps = 0  # steps buffered under DDP but never combined (a rank failed)
        first_step, recorded = 0, 0
        if self.run_dir is not None:
            self.rundir = RunDirectory.open(
                run_dir, overwrite=overwrite, resume=resume, layers=layout.layer_names
            )
            first_step, recorded = self.rundir.first_step, self.rundir.steps_on_disk
        if dist and resume:
            # every rank numbers the steps, and flushes, as rank 0's resumed run does
            from gradwatch.monitor import collective as gw_dist

            first_step, recorded = gw_dist.broadcast_from_rank0((first_step, recorded),
                                                                process_group)
        self.first_step, self.steps_on_disk = first_step, recorded
        self.writer = RunWriter(
            self.run_dir,
            layout,
            live_sink if rank == 0 else None,
            first_part=self.rundir.first_part if self.rundir is not None else 0,
            max_pending_rows=max_pending_rows,
        )

    def start(self) -> None:
        """meta.json "running"; the handlers that mark the run if the program dies."""
        # every rank (not only the writer) must know when the program dies on an exception
        _install_excepthook()
        if self.rundir is not None:
            self.rundir.start(self.rundir.meta(self.describe(RUNNING), RUNNING))
            _install_sigterm()

    def flush(self, wait: bool) -> None:
        """Hand the buffered blocks to the writer (through the ranks' collective under DDP).

        With ``wait``, until every flush handed over so far is written (the writer is never
        more than one flush behind: :meth:`~gradwatch.store.writer.RunWriter.submit`).
        """
        if self.dist:
            self._flush_distributed(wait)
        else:
            if self.buffer:
                self.writer.submit(self.buffer)
                self.buffer = []
                self.unsettled = self.run_dir is not None
            if wait:
                self.writer.wait()  # this flush and those before it (one may be in flight)
        self.report_write_errors()

    def _flush_distributed(self, wait: bool) -> None:
        from gradwatch.monitor import collective as gw_dist

        if self.dist_broken:
            raise DistributedFlushError(
                "gradwatch: a previous collective flush failed (another rank stopped); this "
                "Monitor no longer flushes. Close it; the steps flushed before are kept"
            )
        blocks, self.buffer = self.buffer, []
        structure = [(b.step, b.kind, b.key, b.tensor.numel()) for b in blocks]
        flat = (
            gw_dist.to_host(torch.cat([b.tensor.reshape(-1).float() for b in blocks]))
            if blocks
            else np.zeros(0, dtype=np.float32)
        )
        try:
            gathered = gw_dist.gather_to_rank0(structure, flat, self.pg)
        except DistributedFlushError:
            self.dist_broken = True
            self.uncombined_steps += len({b.step for b in blocks})
            raise
        if self.rank == 0 and gathered is not None and structure:
            structure, flat = gw_dist.combine(gathered)
            batch = self.writer.submit_flat(structure, flat)
            self.unsettled = self.run_dir is not None
            if wait:
                self.writer.wait(batch)

    def settle(self) -> None:
        """The step after a flush closes: wait until that flush is on disk.

        So a kill never loses more than the last flush interval: a finished step is either
        in a part on disk or in the buffer since the last flush. The write has had a whole
        training step to run; a disk that hangs is waited for once, at most
        :data:`~gradwatch.store.writer.MAX_WAIT_SECS`.
        """
        self.unsettled = False
        self.writer.settle()
        if self.writer.overdue:
            self.report_write_errors()

    def report_write_errors(self) -> None:
        """Warn (from the training thread) about writes that failed; training goes on."""
        errs = self.writer.take_errors()
        where = self.run_dir if self.run_dir is not None else "memory"
        if errs and not self.write_warned:
            self.write_warned = True
            warnings.warn(
                f"gradwatch could not write statistics to {where}: {errs[-1]!r}. Training goes "
                "on; the rows are kept and retried at the next flush and at close (at most "
                f"{self.writer.max_pending_rows:,} rows), and everything written before stays "
                "readable",
                RuntimeWarning,
                stacklevel=4,
            )
        elif not errs and self.write_warned and self.writer.pending_rows == 0:
            self.write_warned = False  # the fault cleared: warn again if another comes
        if self.writer.overdue and not self.overdue_warned:
            self.overdue_warned = True
            warnings.warn(
                f"gradwatch: writing one flush to {where} took over {MAX_WAIT_SECS:.0f} s (a slow "
                "or hanging disk); training goes on without waiting for it, so until the writer "
                "catches up a kill may lose more than the last flush interval",
                RuntimeWarning,
                stacklevel=4,
            )
        dropped = self.writer.dropped_rows
        if dropped and not self.dropped_warned:
            self.dropped_warned = dropped
            warnings.warn(
                f"gradwatch: the write fault on {where} lasts; the oldest rows held for retry "
                f"are being dropped to keep memory bounded ({dropped:,} so far, at most "
                f"{self.writer.max_pending_rows:,} kept). meta.json will count them as lost_rows",
                RuntimeWarning,
                stacklevel=4,
            )

    def write_meta(self, status: str) -> None:
        """Rewrite meta.json (a failure is reported like a failed write)."""
        if self.rundir is None:
            return
        if not self.rundir.write_meta(self.rundir.meta(self.describe(status), status)):
            self.writer.error = self.rundir.meta_error
            self.report_write_errors()

    def close(self, recorded: int) -> None:
        """Flush (unless a collective must not be made), stop the writer, finish the run.

        Raises:
            DistributedFlushError: the final collective flush failed; the run is then
                finished as "failed" before this is raised.
        """
        flush_error: BaseException | None = None
        if self.dist and (self.status != CLOSED or self.dist_broken):
            # no collective: the other ranks may be blocked elsewhere and never join
            self.uncombined_steps += len({b.step for b in self.buffer})
            self.buffer = []
        else:
            try:
                self.flush(wait=False)
            except DistributedFlushError as exc:
                self.status = FAILED
                flush_error = exc
        self.writer.close()
        self._finish(recorded)
        if flush_error is not None:
            raise flush_error

    def _finish(self, recorded: int) -> None:
        """Final meta.json (status, lost rows), diagnosis, one message about any loss."""
        self.report_write_errors()
        rd = self.rundir
        if rd is None:
            return
        lost = self.writer.lost_rows
        steps = self.writer.lost_steps()
        meta = rd.meta(
            self.describe(self.status),
            self.status,
            lost_rows=lost,
            lost_steps=list(steps) if steps else None,
            uncombined_steps=self.uncombined_steps if self.dist else None,
        )
        # a run with lost rows is not diagnosed: findings on partial data would mislead
        diagnose = self.diagnose if recorded and lost == 0 else None
        written = rd.finish(meta, diagnose)
        self.diagnosed = bool(meta.get("diagnosed"))
        if lost or not written:
            self._warn_loss(lost, steps, written)

    def release(self) -> None:
        """Release the run directory's lock."""
        if self.rundir is not None:
            self.rundir.release()

    def _warn_loss(self, lost: int, steps: tuple[int, int] | None, meta_written: bool) -> None:
        rd = self.rundir
        assert rd is not None
        err = self.writer.error
        parts = []
        if lost:
            span = f" (steps {steps[0]}-{steps[1]})" if steps else ""
            parts.append(
                f"gradwatch lost {lost:,} rows of statistics{span}: they could not be written "
                f"to {rd.path} ({err!r})"
            )
            if self.writer.dropped_rows:
                parts.append(
                    f"{self.writer.dropped_rows:,} of them were dropped while the fault lasted, "
                    f"to keep memory bounded ({self.writer.max_pending_rows:,} rows)"
                )
            parts.append(f"{self.writer.written_rows:,} rows were written and stay readable")
        if meta_written:
            if lost:
                parts.append(f"meta.json records lost_rows={lost}")
        else:
            parts.append(
                f"the final meta.json could not be written either ({rd.meta_error!r}), so it "
                "does not show the final status; the steps already written load with gw.load"
            )
        warnings.warn("; ".join(parts), RuntimeWarning, stacklevel=5)
