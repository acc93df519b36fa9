"""What the taps of one Monitor share: :class:`TapContext`."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from gradwatch.layers import find_activations
from gradwatch.stats import SOURCES
from gradwatch.store.writer import Block, Layout

F32 = torch.float32


def param_layout(layers: list[Any]) -> tuple[list[nn.Parameter], Layout]:
    """The layers' unique parameters (index = parameter id in blocks) and the writer's layout."""
    params: list[nn.Parameter] = []
    index: dict[int, int] = {}
    layer_params: dict[int, list[int]] = {}
    for li, ly in enumerate(layers):
        ids = []
        for p in ly.parameters():
            if p.numel() == 0:
                continue
            if id(p) not in index:
                index[id(p)] = len(params)
                params.append(p)
            ids.append(index[id(p)])
        layer_params[li] = ids
    layout = Layout(
        layer_names=[ly.name for ly in layers],
        layer_params=layer_params,
        numel=np.array([p.numel() for p in params], dtype=np.int64),
    )
    return params, layout


class TapContext:
    """What the taps of one Monitor share. Taps read it; the Monitor keeps it current.

    Attributes:
        model: the watched model.
        layers: the :class:`~gradwatch.layers.Layer` s, in registration order.
        params: the unique parameters of the layers (index = parameter id of blocks).
        all_pids: ``tuple(range(len(params)))``.
        layout: the writer's :class:`~gradwatch.store.writer.Layout`.
        activations: (name, module, family) of each activation module.
        wanted: the statistics asked for; ``sources``: the registry sources they need.
        optimizers: the optimizers the Monitor hooks (empty in manual mode).
        scaler: the ``torch.amp.GradScaler``, or None.
        plan: the pending step's :class:`StepPlan`.
        tracker: the :class:`~gradwatch.monitor.tracker.LayerTracker` (``last_layer``: the
            layer whose forward ran last).
        replaying: a NaN-forensics replay of the forward pass is running: hooks stand aside.
        persistent: hooks stay registered for good (``torch.compile`` was seen).
        skipped: GradScaler skipped the pending step's optimizer step.
        scale_used: the loss scale of the pending step's backward, (1,) float32, or None.
        precision: the low-precision format named by ``watch(precision=)``, or None.
        loss_scale: ``watch(loss_scale=)``: without a GradScaler, the precision statistics
            are read as if the loss were multiplied by it.
        distributed, rank, process_group: whether the Monitor combines ranks, its rank, the
            group (None: the default group).
        sharded: the sharded layout's name ("FSDP2", "HSDP", "tensor parallel", ...) when the
            parameters are DTensors, else None (the parameter taps then step aside for the
            shard tap).
    """

    def __init__(self, model: nn.Module, layers: list[Any], wanted: set[str],
                 optimizers: list[Any], scaler: Any, emit: Callable[[Block], None],
                 settings: Any = None):
        sources = {src for src, names in SOURCES.items() if wanted & set(names)}
        self.model = model
        self.layers = layers
        params, layout = param_layout(layers)
        self.params = params
        self.all_pids = tuple(range(len(params)))
        self.layout = layout
        self.activations = find_activations(model) if "act" in sources else []
        self.wanted = frozenset(wanted)
        self.sources = frozenset(sources)
        self.optimizers = optimizers
        self.scaler = scaler
        self.plan: Any = None  # the pending step's StepPlan
        self.tracker: Any = None
        self.replaying = False
        self.compiled = False
        self.persistent = False
        self.skipped = False
        self.scale_used: torch.Tensor | None = None
        # watch(precision=, loss_scale=), as checked: the format training casts to, and the
        # scale the precision statistics read a loss without a GradScaler at
        self.precision: str | None = getattr(settings, "precision", None)
        self.loss_scale = float(getattr(settings, "loss_scale", 1.0))
        # set by the Monitor: the ranks it combines; by the shard tap: the sharded layout
        self.distributed, self.rank, self.process_group = False, 0, None
        self.sharded: str | None = None
        self.taps: dict[str, Any] = {}
        self._emit = emit
        self._warned: set[str] = set()
        self._index_cache: dict = {}
        self._flag_cache: dict = {}

    def tap(self, name: str) -> Any:
        """The tap called ``name`` (see :attr:`Tap.name`), or None."""
        return self.taps.get(name)

    def emit(self, step: int, kind: str, key: Any, tensor: torch.Tensor) -> None:
        """Hand a block for ``step`` to the Monitor's buffer (outside :meth:`Tap.collect`)."""
        self._emit(Block(step, kind, key, tensor))

    def warn(self, what: str, exc: BaseException | None = None) -> None:
        """Warn once per kind of thing that could not be recorded; training goes on."""
        if what in self._warned:
            return
        self._warned.add(what)
        why = f" ({exc!r})" if exc is not None else ""
        warnings.warn(
            f"gradwatch: {what} could not be recorded{why}; training goes on and the other "
            "statistics are recorded",
            RuntimeWarning,
            stacklevel=4,
        )

    def on_compiled(self) -> None:
        """A hook ran inside ``torch.compile`` tracing: hooks stay registered from now on."""
        self.compiled = True
        self.persistent = True

    def inv_scale(self) -> torch.Tensor | float:
        """1 / the GradScaler's current scale (a device tensor), or 1.0 without one."""
        s = self.scaler
        if s is not None and s.is_enabled() and getattr(s, "_scale", None) is not None:
            return s._scale.to(F32).reciprocal()
        return 1.0

    def flags(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Constant (1,) tensors 0.0 and 1.0 on ``device``, made once (no copy per step)."""
        f = self._flag_cache.get(device)
        if f is None:
            both = torch.tensor([0.0, 1.0], dtype=F32).to(device)
            f = self._flag_cache[device] = (both[0:1], both[1:2])
        return f

    def index(self, rows: list[int], device: torch.device) -> torch.Tensor:
        """``torch.tensor(rows)`` on ``device``, kept: the same rows come back step after step."""
        key = (tuple(rows), device)
        idx = self._index_cache.get(key)
        if idx is None:
            if len(self._index_cache) > 64:
                self._index_cache.clear()
            idx = self._index_cache[key] = torch.tensor(rows, dtype=torch.long, device=device)
        return idx
