"""The temporal-flow tap: ``time_grad_first``, ``time_grad_last``, ``time_steps``.

At steps that record them, a forward pre-hook on each recurrent layer (``nn.RNNBase``) hooks
the gradient of its input sequence and keeps its norms at the first and the last time step
(:mod:`gradwatch.stats.temporal`). Raw data that does not require grad is replaced by
``x.detach().requires_grad_()`` (a view without history), so that d loss / d x exists.
PackedSequence, keyword inputs and anything but a dense floating (T, ...) tensor are skipped.

The same two norms are kept for the model's own input when it is a floating ``(N, T, F)``
sequence (``(T, N, F)`` when its recurrent layers read sequence-first), T > 1, under the
run-level layer ``""`` (row ``len(layers)``): the flow through time where the signal enters,
whatever carries it (a recurrent layer, a loop, a scan). An input whose first layer is a
convolution is left out (a convolution reads a window of steps by design). Norms are taken
without float32 underflow (:func:`gradwatch.stats.temporal.scaled_norm`).

Under tensor parallelism (:mod:`gradwatch.monitor.tensor_parallel`) each rank holds a copy of
a sequence or a slice of it (sequence parallelism slices the model's input along its time
dimension: the first step lies on the first rank, the last on the last); the squared norms
are weighted by that share and summed over the ranks within the step.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from gradwatch.monitor.hookkit import HookSet, tensors_in
from gradwatch.monitor.sharding import input_share, is_tensor_parallel
from gradwatch.monitor.tap import Record, StepPlan, Tap, register_tap
from gradwatch.monitor.tensor_parallel import MIXED, TensorParallelShares
from gradwatch.stats.temporal import TIME_STATS, scaled_norm

_CONV = (nn.modules.conv._ConvNd,)


@register_tap
class TemporalTap(Tap):
    """Gradient norms at the ends of each recurrent layer's input sequence and the model's."""

    name = "time"
    sources = ("time",)

    def install(self) -> None:
        """A forward pre-hook on each recurrent layer (when asked for)."""
        self.active = self.needed
        self.rows: list[tuple[int, int]] = []  # (layer, T) of each call in the step
        self.vals: list[torch.Tensor] = []  # (2,) norms at t = 0 and t = T - 1
        self.on = False
        self.dims: list[tuple[int, int]] = []  # (time dim, ndim) of each call
        self.tp: TensorParallelShares | None = None  # under tensor parallelism (set lazily)
        self.root: Any = None  # the last layer output's autograd node (tensor parallel)
        self.leaf: torch.Tensor | None = None  # the model input whose gradient is hooked
        self._fn_cache: dict[tuple[int, int, int], Any] = {}
        self.hooks = HookSet()
        if not self.needed:
            return
        rnns = [(li, ly.module) for li, ly in enumerate(self.ctx.layers)
                if isinstance(ly.module, nn.RNNBase)]
        self.hooks.forward([m for _, m in rnns], [self._make_hook(li) for li, _ in rnns],
                           pre=True)
        self.seq_first = any(isinstance(m, nn.RNNBase) and not m.batch_first
                             for m in self.ctx.model.modules())

    def begin_step(self, plan: StepPlan) -> None:
        """Reset the step's rows; hooks on at the steps that record them."""
        self.rows = []
        self.vals = []
        self.dims = []
        self.on = self.needed and plan.any_due(TIME_STATS)
        self.hooks.switch(self.on or plan.persistent)
        if self.tp is None and self.needed and is_tensor_parallel(self.ctx.sharded):
            self.tp = TensorParallelShares(self.ctx, "time_grad_first and time_grad_last")
        self.root = self.leaf = None
        # under tensor parallelism the model input's share is found from a later node
        self.layer_outputs = bool(self.on and self.tp is not None and self.ctx.layers) and (
            len(self.ctx.layers) not in self.tp.shares)

    def on_layer_output(self, li: int, out: Any) -> None:
        """Tensor parallel: keep the latest layer output's node (to find the input's share)."""
        for t in tensors_in(out):
            if t.requires_grad and t.grad_fn is not None:
                self.root = t.grad_fn
                return

    def on_forward(self, args: Any, kwargs: Any) -> tuple | None:
        """The model input's flow through time: new args whose first one's gradient is hooked.

        A floating ``(N, T, F)`` first argument that does not require grad is replaced by a
        copy of a leaf that does (a copy, so that the model may still change its input in
        place); one that requires grad is hooked as it is.
        """
        ctx = self.ctx
        if not self.on or ctx.replaying or not torch.is_grad_enabled():
            return None
        try:
            x = args[0] if args else None
            time_dim = 0 if self.seq_first else 1
            if (
                type(x) is not torch.Tensor
                or x.dim() != 3
                or not x.is_floating_point()
                or x.layout != torch.strided
                # a sequence-parallel rank may hold one step of a longer sequence
                or x.shape[time_dim] < (1 if self.tp is not None else 2)
                or self._conv_first()
            ):
                return None
            fn = self._grad_hook(len(ctx.layers), time_dim, int(x.shape[time_dim]))
            if x.requires_grad:  # its gradient is computed anyway
                self.leaf = x
                x.register_hook(fn)
                return None
            leaf = self.leaf = x.detach().requires_grad_(True)
            leaf.register_hook(fn)
            return (leaf.clone(), *args[1:])
        except Exception as exc:  # noqa: BLE001 - never take training down
            ctx.warn("time_grad_first and time_grad_last of the input", exc)
            return None

    def _conv_first(self) -> bool:
        order = self.ctx.tracker.exec_order
        return bool(order) and isinstance(self.ctx.layers[order[0]].module, _CONV)

    def _make_hook(self, li: int):
        ctx = self.ctx

        def on_recurrent_input(module: nn.Module, args: Any) -> Any:
            if torch.compiler.is_compiling():
                ctx.on_compiled()
                return None
            if not self.on or ctx.replaying or not torch.is_grad_enabled():
                return None
            try:
                x = args[0] if args else None
                if (
                    type(x) is not torch.Tensor
                    or x.dim() not in (2, 3)
                    or not x.is_floating_point()
                    or x.layout != torch.strided
                ):
                    return None
                time_dim = 1 if (x.dim() == 3 and module.batch_first) else 0
                steps = int(x.shape[time_dim])
                if steps == 0:
                    return None
                new_args = None
                if self.tp is not None and x.grad_fn is not None:
                    self.tp.see_tensor(li, x)  # raw data: a copy on every rank
                if not x.requires_grad:  # raw data: a view without history, so dL/dx exists
                    x = x.detach().requires_grad_(True)
                    new_args = (x, *args[1:])
                x.register_hook(self._grad_hook(li, time_dim, steps))
                return new_args
            except Exception as exc:  # noqa: BLE001 - never take training down
                ctx.warn("time_grad_first and time_grad_last", exc)
                return None

        return on_recurrent_input

    def _grad_hook(self, li: int, time_dim: int, steps: int):
        # built once per (layer, time axis, sequence length), then reused step after step
        key = (li, time_dim, steps)
        fn = self._fn_cache.get(key)
        if fn is None:
            if len(self._fn_cache) > 256:
                self._fn_cache.clear()
            fn = self._fn_cache[key] = self._new_grad_hook(li, time_dim, steps)
        return fn

    def _new_grad_hook(self, li: int, time_dim: int, steps: int):
        def on_time_grad(grad: torch.Tensor) -> None:
            try:
                g = grad.detach()
                if li == len(self.ctx.layers) and self._conv_first():
                    return  # the input went into a convolution first (known after pass one)
                tp = self.tp
                if tp is not None and li == len(self.ctx.layers) and li not in tp.shares:
                    share, sizes = input_share(self.root, self.leaf)
                    tp.shares[li], tp.sizes = share, tp.sizes | sizes
                ends = torch.stack([
                    scaled_norm(g.select(time_dim, 0)),
                    scaled_norm(g.select(time_dim, steps - 1)),
                ])
                self.rows.append((li, steps))
                self.dims.append((time_dim, g.dim()))
                self.vals.append(ends)
            except Exception as exc:  # noqa: BLE001 - never take training down
                if self.tp is not None and self.ctx.distributed:
                    raise  # skipped on one rank, the step's collective would hang
                self.ctx.warn("time_grad_first and time_grad_last", exc)

        return on_time_grad

    def collect(self, rec: Record) -> None:
        """The step's norms (unscaled) as one ``time`` block."""
        if not self.vals or rec.skipped:
            return
        vals = self.vals
        if len({t.device for t in vals}) > 1:
            vals = [t.cpu() for t in vals]
        norms = torch.cat(vals)
        inv = self.ctx.inv_scale()
        if not isinstance(inv, float):
            norms = norms * inv.to(norms.device)
        if self.tp is not None:
            self._emit_tensor_parallel(rec, norms)
            return
        rec.emit("time", tuple(self.rows), norms)

    def _emit_tensor_parallel(self, rec: Record, norms: torch.Tensor) -> None:
        """The calls' squared norms weighted by the rank's share, one ``shard_time`` block."""
        tp = self.tp
        groups = tp.groups()
        if groups is None:
            return
        size, dp = groups
        rows, weights, keep = [], [], []
        for j, ((li, steps), (time_dim, ndim)) in enumerate(zip(self.rows, self.dims,
                                                                 strict=True)):
            share = tp.shares.get(li)
            if share == MIXED:
                continue
            first, last, grow = ((1.0 / size, 1.0 / size, 1) if share is None
                                 else share.ends(time_dim, ndim))
            if li == len(self.ctx.layers) and steps * grow < 2:
                continue  # the model's input: a sequence of one step is not one
            rows.append((li, steps * grow))
            weights += [first, last]
            keep += [2 * j, 2 * j + 1]
        if rows:
            tp.emit(rec, "shard_time", tuple(rows), norms[keep].square(), weights, dp)

    def remove(self) -> None:
        """Remove the hooks."""
        self.hooks.remove()
        self._fn_cache.clear()
