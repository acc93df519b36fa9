"""The Monitor: per-layer statistics of a model while it trains, read from a set of taps.

Each source of statistics is a *tap* (interface: :mod:`gradwatch.monitor.tap`; the taps:
:mod:`gradwatch.monitor.taps`) that owns its hooks, buffers and registry statistics. The
Monitor keeps the lifecycle and the sink (:class:`~gradwatch.monitor.lifecycle.RunSession`:
run directory, background writer, flushes) and the schedule, and reads its taps in a loop
(:class:`~gradwatch.monitor.loop.TapLoop`). Nothing on the hot path reads a device value on
the host: blocks stay on the device until a flush moves them in one transfer.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gradwatch.errors import GradwatchValueError
from gradwatch.handoff import diagnose_at_close
from gradwatch.monitor import options as opts
from gradwatch.monitor.collective import watched_ranks
from gradwatch.monitor.context import TapContext
from gradwatch.monitor.lifecycle import _LIVE, RunSession, _restore_sigterm, set_default_diagnose
from gradwatch.monitor.loop import TapLoop
from gradwatch.monitor.meta import build_meta, describe_structure
from gradwatch.monitor.sinks import make_live_sink
from gradwatch.stats import ALL_STATS
from gradwatch.store.reader import Run, tables_to_frame
from gradwatch.store.rundir import FAILED, FINAL_STATUSES, INTERRUPTED, RUNNING
from gradwatch.store.writer import MAX_PENDING_ROWS

__all__ = ["Monitor", "set_default_diagnose", "watch"]


class Monitor:
    """Records per-layer gradient, activation and update statistics of a model.

    Create it with :func:`gradwatch.watch`. Use it as a context manager, or call
    :meth:`close` when training ends: that flushes everything and removes every hook.
    """

    def __init__(
        self,
        model: nn.Module,
        run_dir: str | Path | None = None,
        optimizer: torch.optim.Optimizer | Sequence[torch.optim.Optimizer] | None = None,
        every: int | str | Callable[[int], bool] = 1,
        activations: bool = True,
        *,
        detail_every: int = 10,
        stats: Iterable[str] | None = None,
        scaler: Any = None,
        flush_every: int = 1000,
        flush_secs: float = 5.0,
        overwrite: bool = False,
        name: str | None = None,
        config: dict[str, Any] | None = None,
        distributed: bool | None = None,
        process_group: Any = None,
        diagnose: bool | Callable[[Path], Iterable[Any]] = True,
        tensorboard: str | Path | None = None,
        resume: bool = False,
        max_pending_rows: int = MAX_PENDING_ROWS,
        precision: Any = None, loss_scale: float | None = None,
    ):
        a = opts.check_watch(  # everything is checked before the model or the disk is touched
            model, run_dir, optimizer, every, activations, detail_every, stats, scaler,
            flush_every, flush_secs, overwrite, name, config, distributed, diagnose,
            tensorboard, resume, max_pending_rows, process_group, precision, loss_scale)
        self.model, self.layers = model, a.layers
        self.stats = tuple(s for s in ALL_STATS if s in a.wanted)
        self.every, self.detail_every, self.name = every, detail_every, name
        self.flush_every, self.flush_secs = a.flush_every, a.flush_secs
        self._config, self._closed, self._session = a.config, False, None
        self._ctx = ctx = TapContext(model, self.layers, a.wanted, a.optimizers, scaler,
                                     lambda block: self._session.buffer.append(block), a)
        # -- distributed: statistics combined across ranks at each flush, rank 0 writes -----
        self._dist, self.rank, self.world_size = watched_ranks(process_group, distributed)
        ctx.distributed, ctx.rank, ctx.process_group = self._dist, self.rank, process_group
        if self._dist:
            self.flush_secs = float("inf")  # ranks flush together, by step count only
        # -- the run directory, the writer and the live sink; a resumed run continues -------
        self._started = time.time()
        self._structure = describe_structure(model, None)  # module types; the graph later
        self._structure_from_graph = False  # from a loss tensor's graph (else TapLoop's)
        live = make_live_sink(tensorboard) if tensorboard is not None and self.rank == 0 else None
        fn = a.diagnose if callable(a.diagnose) else diagnose_at_close() if a.diagnose else None
        self._session = session = RunSession(
            a.run_dir, ctx.layout, rank=self.rank, dist=self._dist, process_group=process_group,
            overwrite=overwrite, resume=resume, live_sink=live,
            max_pending_rows=max_pending_rows, describe=lambda st: build_meta(self, st),
            diagnose=fn)
        self.run_dir = session.run_dir
        self._last_flush = time.monotonic()
        self._meta_ordered = False
        # -- the taps and their hooks (installed once; removed by close) --------------------
        self._loop = TapLoop(self, ctx, a.schedule, session.first_step, session.steps_on_disk,
                             self._dist)
        self._loop.begin_step()
        session.start()  # meta.json "running"; signal and exception handlers
        _LIVE.add(self)

    # ------------------------------------------------------------------------ public API
    @property
    def closed(self) -> bool:
        """Whether :meth:`close` has run."""
        return self._closed

    @property
    def step_count(self) -> int:
        """Number of training steps seen so far (recorded or not)."""
        return self._loop.step

    def step(self, loss: torch.Tensor | float | None = None) -> None:
        """Mark the end of a training step (or, with ``optimizer=``, pass the loss).

        Without ``optimizer=``: call it after ``loss.backward()`` (and before
        ``optimizer.step()``, so that the update ratio covers the right step); it records
        the pending step. With ``optimizer=``, steps close on ``optimizer.step()`` and this
        only attaches the loss: to the step just closed if no forward pass has run since,
        otherwise to the pending step.

        Args:
            loss: the training loss (a tensor is kept on its device; no host sync). A
                Python number is kept on the host and meets the device values at the
                flush.
        """
        self._ensure_open()
        if not self._structure_from_graph and getattr(loss, "grad_fn", None) is not None:
            # once: residual joins and attention, read from the loss's autograd graph
            self._structure_from_graph = True
            found = describe_structure(self.model, loss)
            self._structure = found if found is not None else self._structure
        self._loop.end_step(opts.check_loss(loss, self._ctx.warn))

    def take_gradients(self) -> None:
        """Take the pending step's gradient statistics from the gradients as they are now.

        For training frameworks that change gradients between backward and
        ``optimizer.step()`` (clipping, for one): call it at the point where the gradients
        are complete (after accumulation and AMP unscaling, before clipping); the optimizer
        step then records the step without taking them again. Also takes the weight snapshot
        for ``update_ratio``.
        """
        self._ensure_open()
        if not self._ctx.optimizers:
            raise GradwatchValueError(
                "take_gradients() needs a Monitor made with optimizer=; without one, "
                "step() takes the gradients"
            )
        self._loop.optim.take_gradients()

    def flush(self, wait: bool = True) -> None:
        """Hand buffered statistics to the writer; with ``wait``, until all of it is written.

        Under ``torch.distributed`` every rank must call it together (steps, close() and the
        step-count schedule do).

        Raises:
            DistributedFlushError: under torch.distributed, another rank stopped.
        """
        if not self._closed:
            self._loop.flush_due = False
            self._loop.dispatch("on_flush")
        self._session.flush(wait)
        self._last_flush = time.monotonic()
        if self.run_dir is not None and self._loop.n_recorded and not self._meta_ordered:
            self._meta_ordered = True  # meta.json again, now that the layer order is known
            self._session.write_meta(RUNNING)

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
            self._session.status = status
        if self._closed:
            return
        self._closed = True
        try:
            self._loop.dispatch("on_flush")  # what taps held back joins the final flush
            self._loop.remove()
            self._session.close(self._loop.n_recorded)
        finally:
            self._session.release()
            _LIVE.discard(self)
            _restore_sigterm()

    def mark_ended(self, status: str) -> None:
        """The process is ending abnormally (``status``): close() will write that status."""
        self._session.status = status

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
        meta = build_meta(self, "closed" if self._closed else "running")
        return Run(meta=meta, stats=tables_to_frame(list(self._session.writer.tables)), path=None)

    def __enter__(self) -> Monitor:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            return self.close()
        interrupted = issubclass(exc_type, KeyboardInterrupt | SystemExit)
        self._session.status = INTERRUPTED if interrupted else FAILED
        try:
            self.close()
        except Exception:  # noqa: BLE001, S110 - the user's exception stays on top
            pass

    def __repr__(self) -> str:
        where = str(self.run_dir) if self.run_dir else "memory"
        state = "closed" if self._closed else f"step {self.step_count}"
        return f"Monitor({len(self.layers)} layers -> {where}, {state})"

    def _ensure_open(self) -> None:
        if self._closed:
            raise GradwatchValueError(
                "this Monitor is closed; create a new one with gw.watch(...) to record more"
            )


def watch(
    model: nn.Module,
    run_dir: str | Path | None = None,
    optimizer: torch.optim.Optimizer | Sequence[torch.optim.Optimizer] | None = None,
    every: int | str | Callable[[int], bool] = 1,
    activations: bool = True,
    **options: Any,
) -> Monitor:
    """Watch a model's gradients, activations and updates while it trains.

    Args:
        model: the network.
        run_dir: directory to write the run to; None keeps the run in memory
            (``monitor.run``).
        optimizer: with it, statistics are taken at each ``optimizer.step()`` (gradient
            accumulation counts one step per optimizer step); without it, call
            ``monitor.step(loss=...)`` after each backward pass.
        every: record every k-th step, ``"log"`` (every one of the first 10 steps, then ~10
            per decade), or a callable ``step -> bool``.
        activations: record activation statistics (mean, std, saturation, dead units).
        **options: ``detail_every`` (record the detail statistics — back-propagated norm,
            max |g|, weight norm, update ratio, activation statistics — every n-th recorded
            step; default 10, 1 for everything every step), ``stats`` (names to record),
            ``scaler`` (the ``torch.amp.GradScaler`` in use: gradients are then recorded
            unscaled, and each step records ``skipped`` and ``loss_scale``; a skipped
            step records no gradient statistics), ``flush_every`` (steps, default 1000),
            ``flush_secs`` (default 5), ``overwrite`` (replace an existing run), ``name``,
            ``config`` (dict stored in meta.json), ``diagnose`` (default True: diagnose the
            run when it closes and write ``findings.jsonl``; or a callable run directory ->
            findings), ``tensorboard`` (a log dir: every flushed value is also written there
            live, as ``gradwatch report --tensorboard`` would; needs the ``tensorboard``
            package), ``resume`` (continue the run already in ``run_dir``, closed or
            crashed, from the step after its last step on disk; meta.json records each
            session), ``max_pending_rows`` (rows kept while writes fail, default 2,000,000,
            then dropped: ``lost_rows``), ``precision``/``loss_scale`` (gradwatch.stats.precision).

    Returns:
        the :class:`Monitor` (a context manager).

    Raises:
        GradwatchTypeError: ``model`` is not an nn.Module, or a wrong argument type.
        GradwatchValueError: ``model`` has no parameters, ``every < 1``, unknown stats.
        RunLockedError: another writer (alive) holds ``run_dir``.
        RunDirectoryError: ``run_dir`` already holds a run (pass ``overwrite=True`` or
            ``resume=True``), or cannot be written.
    """
    return Monitor(model, run_dir, optimizer, every, activations, **options)
