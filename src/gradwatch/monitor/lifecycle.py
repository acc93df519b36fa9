"""Run lifecycle of the Monitor: run directory, flush, close, status, atexit and SIGTERM.

The run directory itself (lock, meta.json, findings, resume) is a
:class:`~gradwatch.store.rundir.RunDirectory`; this mixin decides *when*: it flushes, writes
the final status, reports rows a write fault lost, and never lets a failing rank enter a
collective under torch.distributed.

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
import time
import warnings
import weakref
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from gradwatch.errors import DistributedFlushError, GradwatchValueError
from gradwatch.handoff import set_diagnose_at_close
from gradwatch.monitor.hookkit import disown
from gradwatch.monitor.listeners import remove_clip_listener
from gradwatch.store.reader import Run, tables_to_frame
from gradwatch.store.rundir import (
    CLOSED,
    FAILED,
    FINAL_STATUSES,
    INTERRUPTED,
    RUNNING,
    Diagnose,
    RunDirectory,
)
from gradwatch.store.writer import MAX_WAIT_SECS

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
        m._stand_aside(True)
    try:
        yield
    finally:
        for m in mons:
            m._stand_aside(False)


def _abnormal_end(status: str) -> None:
    """The process is ending on an exception or a signal: mark every open run."""
    for mon in list(_LIVE):
        if not mon.closed:
            mon._status = status


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


class Lifecycle:
    """Mixin of :class:`~gradwatch.monitor.Monitor`: run directory, flush, close and status."""

    _rundir: RunDirectory | None = None
    _status = CLOSED
    _write_warned = False
    _dropped_warned = 0
    _overdue_warned = False
    _diagnosed = False
    _meta_ordered = False  # meta.json rewritten once the execution order of layers is known
    _dist_broken = False  # a collective failed: no further collective from this rank
    _uncombined_steps = 0  # steps buffered under DDP but never combined (a rank failed)

    def _open_run_dir(self, run_dir: Any, overwrite: bool, resume: bool) -> None:
        """Open (create or resume) the run directory; set where steps and parts continue."""
        first_step, recorded = 0, 0
        if self.run_dir is not None:
            self._rundir = RunDirectory.open(
                run_dir, overwrite=overwrite, resume=resume, layers=self._layer_names
            )
            first_step, recorded = self._rundir.first_step, self._rundir.steps_on_disk
        if self._dist and resume:
            # every rank numbers the steps, and flushes, as rank 0's resumed run does
            from gradwatch.monitor import collective as gw_dist

            first_step, recorded = gw_dist.broadcast_from_rank0((first_step, recorded), self._pg)
        self._step, self._n_recorded = first_step, recorded
        self._late_loss_step = first_step - 1  # a loss never goes to a step already on disk

    def _start_run_dir(self) -> None:
        # every rank (not only the writer) must know when the program dies on an exception
        _install_excepthook()
        if self._rundir is not None:
            self._rundir.start(self._rundir.meta(self._meta(RUNNING), RUNNING))
            _install_sigterm()

    # ------------------------------------------------------------------------ public API
    @property
    def closed(self) -> bool:
        """Whether :meth:`close` has run."""
        return self._closed

    @property
    def step_count(self) -> int:
        """Number of training steps seen so far (recorded or not)."""
        return self._step

    def flush(self, wait: bool = True) -> None:
        """Hand buffered statistics to the writer; with ``wait``, until all of it is written.

        Under ``torch.distributed`` every rank must call it together (steps, close() and the
        step-count schedule do).

        Raises:
            DistributedFlushError: under torch.distributed, another rank stopped.
        """
        self._flush_due = False
        if self._dist:
            self._flush_distributed(wait)
        else:
            if self._buffer:
                self._writer.submit(self._buffer)
                self._buffer = []
            if wait:
                self._writer.wait()  # this flush and those before it (one may be in flight)
        self._last_flush = time.monotonic()
        self._report_write_errors()
        if self.run_dir is not None and self._n_recorded and not self._meta_ordered:
            self._meta_ordered = True
            self._write_meta(RUNNING)

    def _flush_distributed(self, wait: bool) -> None:
        from gradwatch.monitor import collective as gw_dist

        if self._dist_broken:
            raise DistributedFlushError(
                "gradwatch: a previous collective flush failed (another rank stopped); this "
                "Monitor no longer flushes. Close it; the steps flushed before are kept"
            )
        blocks, self._buffer = self._buffer, []
        structure = [(b.step, b.kind, b.key, b.tensor.numel()) for b in blocks]
        flat = (
            gw_dist.to_host(torch.cat([b.tensor.reshape(-1).float() for b in blocks]))
            if blocks
            else np.zeros(0, dtype=np.float32)
        )
        try:
            gathered = gw_dist.gather_to_rank0(structure, flat, self._pg)
        except DistributedFlushError:
            self._dist_broken = True
            self._uncombined_steps += len({b.step for b in blocks})
            raise
        if self.rank == 0 and gathered is not None and structure:
            structure, flat = gw_dist.combine(gathered)
            batch = self._writer.submit_flat(structure, flat)
            if wait:
                self._writer.wait(batch)

    def _report_write_errors(self) -> None:
        """Warn (from the training thread) about writes that failed; training goes on."""
        errs = self._writer.take_errors()
        where = self.run_dir if self.run_dir is not None else "memory"
        if errs and not self._write_warned:
            self._write_warned = True
            warnings.warn(
                f"gradwatch could not write statistics to {where}: {errs[-1]!r}. Training goes "
                "on; the rows are kept and retried at the next flush and at close (at most "
                f"{self._writer.max_pending_rows:,} rows), and everything written before stays "
                "readable",
                RuntimeWarning,
                stacklevel=3,
            )
        elif not errs and self._write_warned and self._writer.pending_rows == 0:
            self._write_warned = False  # the fault cleared: warn again if another comes
        if self._writer.overdue and not self._overdue_warned:
            self._overdue_warned = True
            warnings.warn(
                f"gradwatch: writing one flush to {where} took over {MAX_WAIT_SECS:.0f} s (a slow "
                "or hanging disk); training goes on without waiting for it, so until the writer "
                "catches up a kill may lose more than the last two flush intervals",
                RuntimeWarning,
                stacklevel=3,
            )
        dropped = self._writer.dropped_rows
        if dropped and not self._dropped_warned:
            self._dropped_warned = dropped
            warnings.warn(
                f"gradwatch: the write fault on {where} lasts; the oldest rows held for retry "
                f"are being dropped to keep memory bounded ({dropped:,} so far, at most "
                f"{self._writer.max_pending_rows:,} kept). meta.json will count them as lost_rows",
                RuntimeWarning,
                stacklevel=3,
            )

    def _write_meta(self, status: str) -> None:
        if self._rundir is None:
            return
        if not self._rundir.write_meta(self._rundir.meta(self._meta(status), status)):
            self._writer.error = self._rundir.meta_error
            self._report_write_errors()

    def close(self, status: str | None = None) -> None:
        """Flush everything, write the final meta.json, remove every hook. Idempotent.

        Rows whose writes failed are retried here; what is still lost is counted in
        ``meta.json`` (``lost_rows``) and reported in one warning. Under torch.distributed a
        run that did not end normally (status "failed" or "interrupted") closes without any
        collective, so a failing rank never waits for ranks that will not join.

        Args:
            status: the run's final status in meta.json: "closed" (default), "failed" or
                "interrupted" (what leaving a ``with`` block on an exception writes).

        Raises:
            GradwatchValueError: an unknown ``status``.
            DistributedFlushError: the final collective flush failed (another rank stopped);
                the run is then closed as "failed" before this is raised.
        """
        if status is not None:
            if status not in FINAL_STATUSES:
                raise GradwatchValueError(
                    f"status must be 'closed', 'failed' or 'interrupted', got {status!r}"
                )
            self._status = status
        if self._closed:
            return
        self._closed = True
        flush_error: BaseException | None = None
        try:
            self._remove_hooks()
            if self._dist and (self._status != CLOSED or self._dist_broken):
                # no collective: the other ranks may be blocked elsewhere and never join
                self._uncombined_steps += len({b.step for b in self._buffer})
                self._buffer = []
            else:
                try:
                    self.flush(wait=False)
                except DistributedFlushError as exc:
                    self._status = FAILED
                    flush_error = exc
            self._writer.close()
            self._finish_run_dir()
        finally:
            self._snapshot = None
            self._act_pend = []
            self._act_pend_n = 0
            self._act_bufs = {}
            if self._rundir is not None:
                self._rundir.release()
            _LIVE.discard(self)
            _restore_sigterm()
        if flush_error is not None:
            raise flush_error

    def _remove_hooks(self) -> None:
        handles = self._handles + self._layer_handles + self._act_handles
        disown(handles)
        for h in handles:
            h.remove()
        ref = getattr(self, "_clip_ref", None)
        if ref is not None:
            remove_clip_listener(ref)
        self._handles.clear()
        self._layer_handles.clear()
        self._act_handles.clear()
        if self._scaler_patched:
            try:
                del self._scaler.step  # back to the class's method
            except AttributeError:
                pass
            self._scaler_patched = False

    def _finish_run_dir(self) -> None:
        """Final meta.json (status, lost rows), diagnosis, one message about any loss."""
        self._report_write_errors()
        rd = self._rundir
        if rd is None:
            return
        lost = self._writer.lost_rows
        steps = self._writer.lost_steps()
        meta = rd.meta(
            self._meta(self._status),
            self._status,
            lost_rows=lost,
            lost_steps=list(steps) if steps else None,
            uncombined_steps=self._uncombined_steps if self._dist else None,
        )
        # a run with lost rows is not diagnosed: findings on partial data would mislead
        diagnose = self._diagnose_fn if self._n_recorded and lost == 0 else None
        written = rd.finish(meta, diagnose)
        self._diagnosed = bool(meta.get("diagnosed"))
        if lost or not written:
            self._warn_loss(lost, steps, written)

    def _warn_loss(self, lost: int, steps: tuple[int, int] | None, meta_written: bool) -> None:
        rd = self._rundir
        assert rd is not None
        err = self._writer.error
        parts = []
        if lost:
            span = f" (steps {steps[0]}-{steps[1]})" if steps else ""
            parts.append(
                f"gradwatch lost {lost:,} rows of statistics{span}: they could not be written "
                f"to {rd.path} ({err!r})"
            )
            if self._writer.dropped_rows:
                parts.append(
                    f"{self._writer.dropped_rows:,} of them were dropped while the fault lasted, "
                    f"to keep memory bounded ({self._writer.max_pending_rows:,} rows)"
                )
            parts.append(f"{self._writer.written_rows:,} rows were written and stay readable")
        if meta_written:
            if lost:
                parts.append(f"meta.json records lost_rows={lost}")
        else:
            parts.append(
                f"the final meta.json could not be written either ({rd.meta_error!r}), so it "
                "does not show the final status; the steps already written load with gw.load"
            )
        warnings.warn("; ".join(parts), RuntimeWarning, stacklevel=4)

    def _ensure_open(self) -> None:
        if self._closed:
            raise GradwatchValueError(
                "this Monitor is closed; create a new one with gw.watch(...) to record more"
            )

    @property
    def run(self) -> Run:
        """The run recorded so far, as a :class:`~gradwatch.store.reader.Run` (flushes first).

        Under ``torch.distributed`` it does not flush (a flush is collective): read it after
        ``close()``, on rank 0.
        """
        if not self._closed and not self._dist:
            self.flush(wait=True)
        if self.run_dir is not None:
            from gradwatch.store.reader import load

            return load(self.run_dir)
        meta = self._meta("closed" if self._closed else "running")
        return Run(meta=meta, stats=tables_to_frame(list(self._writer.tables)), path=None)

    def __enter__(self) -> Any:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            interrupted = issubclass(exc_type, KeyboardInterrupt | SystemExit)
            self._status = INTERRUPTED if interrupted else FAILED
            try:
                self.close()
            except Exception:  # noqa: BLE001, S110 - the user's exception stays on top
                pass
        else:
            self.close()
