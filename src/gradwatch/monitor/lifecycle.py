"""Run lifecycle of the Monitor: run directory, flush, close, atexit and SIGTERM."""

from __future__ import annotations

import atexit
import shutil
import signal
import threading
import time
import warnings
import weakref
from typing import Any

import numpy as np
import torch

from gradwatch.errors import GradwatchValueError, RunDirectoryError
from gradwatch.monitor.listeners import remove_clip_listener
from gradwatch.store import lock as run_lock
from gradwatch.store.format import FINDINGS, META, STATS_DIR, write_json_atomic
from gradwatch.store.reader import Run, tables_to_frame

_LIVE: weakref.WeakSet[Any] = weakref.WeakSet()


@atexit.register
def _close_all() -> None:  # flush runs of a process that exits without closing them
    for mon in list(_LIVE):
        try:
            mon.close()
        except Exception:  # noqa: BLE001, S110 - never raise at exit
            pass


_PREVIOUS_SIGTERM: Any = None


def _on_sigterm(signum: int, frame: Any) -> None:
    """SIGTERM -> SystemExit, so ``with`` blocks and atexit flush the open runs."""
    raise SystemExit(128 + signum)


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
    """Mixin of :class:`~gradwatch.monitor.Monitor`: run directory, flush and close."""

    def _prepare_run_dir(self, overwrite: bool) -> None:
        rd = self.run_dir
        assert rd is not None
        if rd.exists() and not rd.is_dir():
            raise RunDirectoryError(f"run_dir {str(rd)!r} exists and is not a directory")
        rd.mkdir(parents=True, exist_ok=True)
        self._lock_path = run_lock.acquire(rd)  # raises RunLockedError if held
        try:
            if (rd / META).exists() or (rd / STATS_DIR).exists():
                if not overwrite:
                    raise RunDirectoryError(
                        f"run_dir {str(rd)!r} already holds a run; choose a new run_dir, or "
                        "pass overwrite=True to replace it"
                    )
                shutil.rmtree(rd / STATS_DIR, ignore_errors=True)
                for f in (META, FINDINGS):
                    (rd / f).unlink(missing_ok=True)
        except BaseException:
            run_lock.release(self._lock_path)
            self._lock_path = None
            raise

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
        """Hand buffered statistics to the writer; with ``wait``, until they are written.

        Under ``torch.distributed`` every rank must call it together (steps, close() and the
        step-count schedule do).
        """
        if self._dist:
            self._flush_distributed(wait)
        elif self._buffer:
            batch = self._writer.submit(self._buffer)
            self._buffer = []
            if wait:
                self._writer.wait(batch)
        self._last_flush = time.monotonic()
        self._report_write_errors()
        if self.run_dir is not None and self._n_recorded and not self._meta_ordered:
            self._meta_ordered = True
            self._write_meta("running")

    def _flush_distributed(self, wait: bool) -> None:
        from gradwatch.integrations import distributed as gw_dist

        blocks, self._buffer = self._buffer, []
        structure = [(b.step, b.kind, b.key, b.tensor.numel()) for b in blocks]
        flat = (
            gw_dist.to_host(torch.cat([b.tensor.reshape(-1).float() for b in blocks]))
            if blocks
            else np.zeros(0, dtype=np.float32)
        )
        gathered = gw_dist.gather_to_rank0(structure, flat, self._pg)
        if self.rank == 0 and gathered is not None and structure:
            structure, flat = gw_dist.combine(gathered)
            batch = self._writer.submit_flat(structure, flat)
            if wait:
                self._writer.wait(batch)

    def _store_findings(self) -> None:
        """Diagnose the finished run and write ``findings.jsonl`` (never raises)."""
        if self.run_dir is None or not self._diagnose_at_close or not self._n_recorded:
            return
        try:
            from gradwatch.diagnose import diagnose, store_findings
            from gradwatch.store.reader import load

            store_findings(self.run_dir, diagnose(load(self.run_dir)))
            self._diagnosed = True
            self._write_meta(self._status)
        except Exception as exc:  # noqa: BLE001 - a diagnosis bug must not lose the run
            warnings.warn(
                f"gradwatch: the run in {self.run_dir} is complete, but diagnosing it failed "
                f"({exc!r}); run gw.diagnose on it later",
                RuntimeWarning,
                stacklevel=3,
            )

    def _report_write_errors(self) -> None:
        """Warn (from the training thread) about writes that failed; training goes on."""
        errs = self._writer.take_errors()
        if errs and not self._write_warned:
            self._write_warned = True
            where = self.run_dir if self.run_dir is not None else "memory"
            warnings.warn(
                f"gradwatch could not write statistics to {where}: {errs[-1]!r}. Training goes "
                "on; the rows are kept and retried at the next flush, and everything written "
                "before stays readable",
                RuntimeWarning,
                stacklevel=3,
            )
        elif not errs and self._write_warned and self._writer.error is None:
            self._write_warned = False

    _write_warned = False
    _compile_warned = False
    _grads_after_step = False
    _late_loss_step = -1
    _diagnosed = False
    _meta_ordered = False  # meta.json rewritten once the execution order of layers is known

    def _write_meta(self, status: str) -> None:
        if self.run_dir is None:
            return
        try:
            write_json_atomic(self.run_dir / META, self._meta(status))
        except OSError as exc:
            self._writer._report(exc)
            self._report_write_errors()

    def close(self, status: str | None = None) -> None:
        """Flush everything, write the final meta.json, remove every hook. Idempotent.

        Args:
            status: the run's final status in meta.json: "closed" (default), "failed" or
                "interrupted" (what leaving a ``with`` block on an exception writes).
        """
        if status is not None:
            if status not in ("closed", "failed", "interrupted"):
                raise GradwatchValueError(
                    f"status must be 'closed', 'failed' or 'interrupted', got {status!r}"
                )
            self._status = status
        if self._closed:
            return
        self._closed = True
        try:
            for h in self._handles + self._layer_handles + self._act_handles:
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
            self.flush(wait=False)
            self._writer.close()
            self._write_meta(self._status)
            self._report_write_errors()
            self._store_findings()
        finally:
            self._snapshot = None
            if self._lock_path is not None:
                run_lock.release(self._lock_path)
                self._lock_path = None
            _LIVE.discard(self)
            _restore_sigterm()

    _status = "closed"

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
            interrupted = issubclass(exc_type, KeyboardInterrupt)
            self._status = "interrupted" if interrupted else "failed"
        self.close()
