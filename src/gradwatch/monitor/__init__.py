"""The Monitor: hooks that record per-layer statistics while a model trains.

Lifecycle: :func:`watch` installs, once, every hook the requested statistics need (a forward
hook per layer for the back-propagated signal, a forward hook per activation module, optimizer
step hooks); :meth:`Monitor.close` removes them all, so the model is as it was.

THE HOT PATH lives in :mod:`gradwatch.monitor.hooks`: ``_on_layer_forward`` /
``_on_backprop`` (per layer call), ``_on_act_forward`` (per activation call) and
``_record_step`` (once per recorded step). None of them calls ``.item()`` or ``.cpu()`` on an
accelerator or loops over parameters where a fused ``torch._foreach_*`` call exists; each
recorded step leaves a few small float32 tensors on the device, and every ``flush_every``
steps (or ``flush_secs`` seconds) they are concatenated and handed to the background writer,
which moves them to the host in one transfer.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from gradwatch.errors import GradwatchTypeError, GradwatchValueError
from gradwatch.handoff import diagnose_at_close
from gradwatch.layers import find_activations, find_layers
from gradwatch.monitor import options as opts
from gradwatch.monitor.hooks import HotPath
from gradwatch.monitor.lifecycle import _LIVE, Lifecycle, set_default_diagnose, standing_aside
from gradwatch.monitor.meta import MetaMixin, describe_structure
from gradwatch.monitor.optim import OptimHooks, check_optimizers
from gradwatch.monitor.origin import Forensics
from gradwatch.monitor.record import StepRecord
from gradwatch.monitor.sinks import make_live_sink
from gradwatch.schedule import make_schedule
from gradwatch.stats import ALL_STATS, DETAIL_STATS, SOURCES
from gradwatch.stats.gradient import NormPlan
from gradwatch.store.rundir import check_run_dir
from gradwatch.store.writer import MAX_PENDING_ROWS, Block, Layout, RunWriter

__all__ = ["Monitor", "set_default_diagnose", "standing_aside", "watch"]


class Monitor(HotPath, StepRecord, OptimHooks, Forensics, Lifecycle, MetaMixin):
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
    ):
        # -- validate everything before touching the model or the disk ---------------------
        opts.check_initialised(model)
        layers = find_layers(model)  # raises for non-modules and models without parameters
        self._schedule = make_schedule(every, "every")
        if isinstance(detail_every, bool) or not isinstance(detail_every, int):
            raise GradwatchTypeError(
                f"detail_every must be a positive int, got {type(detail_every).__name__}"
            )
        if detail_every < 1:
            raise GradwatchValueError(
                f"detail_every must be >= 1, got {detail_every}; use 1 to record every "
                "statistic at every recorded step"
            )
        flush_every = opts.check_flush_every(flush_every)
        flush_secs = opts.check_flush_secs(flush_secs)
        wanted = opts.check_stats(stats, ALL_STATS)
        if run_dir is not None:
            run_dir = check_run_dir(run_dir)
        config = opts.check_config(config)
        for flag, val in (("activations", activations), ("overwrite", overwrite),
                          ("resume", resume)):
            opts.check_flag(flag, val)
        opts.check_distributed(distributed, process_group)
        diagnose = opts.check_diagnose(diagnose)
        opts.check_positive_int("max_pending_rows", max_pending_rows, MAX_PENDING_ROWS)
        opts.check_optional_path("tensorboard", tensorboard)
        opts.check_name(name)
        if overwrite and resume:
            raise GradwatchValueError(
                "overwrite=True and resume=True contradict each other: resume continues the "
                "run in run_dir, overwrite deletes it; pass one of them"
            )
        opts.check_resume(resume, run_dir)
        if not activations:
            wanted -= set(SOURCES["act"])
        optimizers = check_optimizers(optimizer, model)
        opts.check_scaler(scaler, optimizers)

        self.model = model
        self.stats = tuple(s for s in ALL_STATS if s in wanted)
        self._need = {src for src, names in SOURCES.items() if wanted & set(names)}
        self._detail_stats = set(DETAIL_STATS) & wanted
        self.detail_every = detail_every
        self.every = every
        self.flush_every = int(flush_every)
        self.flush_secs = float(flush_secs)
        self._optimizers = optimizers
        self._scaler = scaler
        self.name = name

        # -- static layout: layers, unique parameters, which layer owns which ----------------
        self.layers = layers
        self._layer_names = [ly.name for ly in layers]
        params: list[nn.Parameter] = []
        index: dict[int, int] = {}
        layer_params: dict[int, list[int]] = {}
        for li, ly in enumerate(layers):
            ids = []
            for p in ly.module.parameters(recurse=False):
                if p.numel() == 0:
                    continue
                if id(p) not in index:
                    index[id(p)] = len(params)
                    params.append(p)
                ids.append(index[id(p)])
            layer_params[li] = ids
        self._params = params
        self._all_pids = tuple(range(len(params)))
        self._plan: NormPlan | None = None  # built lazily, once gradients exist
        self._layout = Layout(
            layer_names=self._layer_names,
            layer_params=layer_params,
            numel=np.array([p.numel() for p in params], dtype=np.int64),
        )
        self._acts_info = find_activations(model) if "act" in self._need else []

        # -- distributed: statistics combined across ranks at each flush, rank 0 writes --------
        from gradwatch.monitor import collective as gw_dist

        self._dist = gw_dist.is_distributed(process_group) if distributed is None else distributed
        self._pg = process_group
        self.rank, self.world_size = gw_dist.rank_and_world(process_group) if self._dist else (0, 1)
        if self._dist:
            self.flush_secs = float("inf")  # ranks flush together, by step count only

        # -- run directory --------------------------------------------------------------------
        self.run_dir = Path(run_dir) if run_dir is not None and self.rank == 0 else None
        self._step = 0  # index of the pending (not yet closed) step
        self._n_recorded = 0
        self._open_run_dir(run_dir, overwrite, resume)  # a resumed run continues its steps
        tb_writer = None
        if tensorboard is not None and self.rank == 0:
            tb_writer = make_live_sink(tensorboard)  # supplied from above by the package root
        self._writer = RunWriter(
            self.run_dir,
            self._layout,
            tb_writer,
            first_part=self._rundir.first_part if self._rundir is not None else 0,
            max_pending_rows=max_pending_rows,
        )
        self._started = time.time()
        self._config = config
        # what the diagnosis needs to know of the model's structure (meta["structure"]):
        # module types now, the autograd graph at the first step given a loss tensor
        self._structure = describe_structure(model, None)
        self._structure_from_graph = False
        self._diagnose_fn = (
            diagnose if callable(diagnose)
            else (diagnose_at_close() if diagnose else None)
        )

        # -- per-step state and hooks (installed once; removed by close) ----------------------
        self._buffer: list[Block] = []
        self._last_flush = time.monotonic()
        self._closed = False
        self._handles: list[Any] = []
        self._init_optim_hooks()  # optim.py: optimizer hooks, GradScaler, clipping listener
        self._init_hot_path()  # hooks.py: buffers, hook functions built once, root hook

        self._start_run_dir()  # meta.json "running"; signal and exception handlers
        _LIVE.add(self)

    # ------------------------------------------------------------------ validation helpers

    def __repr__(self) -> str:
        where = str(self.run_dir) if self.run_dir else "memory"
        state = "closed" if self._closed else f"step {self._step}"
        return f"Monitor({len(self.layers)} layers -> {where}, {state})"


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
            crashed, from the step after its last step on disk; meta.json records every
            session), ``max_pending_rows`` (rows held for retry while writes fail, default
            2,000,000; past it the oldest are dropped and counted in meta.json's
            ``lost_rows``).

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
