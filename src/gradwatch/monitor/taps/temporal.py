"""The temporal-flow tap: ``time_grad_first``, ``time_grad_last``, ``time_steps``.

At steps that record them, a forward pre-hook on each recurrent layer (``nn.RNNBase``) hooks
the gradient of its input sequence and keeps its norms at the first and the last time step
(:mod:`gradwatch.stats.temporal`). Raw data that does not require grad is replaced by
``x.detach().requires_grad_()`` (a view without history), so that d loss / d x exists.
PackedSequence, keyword inputs and anything but a dense floating (T, ...) tensor are skipped.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from gradwatch.monitor.hookkit import HookSet
from gradwatch.monitor.tap import Record, StepPlan, Tap, register_tap
from gradwatch.stats.temporal import TIME_STATS

F32 = torch.float32


@register_tap
class TemporalTap(Tap):
    """Gradient norms at the ends of each recurrent layer's input sequence."""

    name = "time"
    sources = ("time",)

    def install(self) -> None:
        """A forward pre-hook on each recurrent layer (when asked for)."""
        self.active = self.needed
        self.rows: list[tuple[int, int]] = []  # (layer, T) of each call in the step
        self.vals: list[torch.Tensor] = []  # (2,) norms at t = 0 and t = T - 1
        self.on = False
        self._fn_cache: dict[tuple[int, int, int], Any] = {}
        self.hooks = HookSet()
        if not self.needed:
            return
        rnns = [(li, ly.module) for li, ly in enumerate(self.ctx.layers)
                if isinstance(ly.module, nn.RNNBase)]
        self.hooks.forward([m for _, m in rnns], [self._make_hook(li) for li, _ in rnns],
                           pre=True)

    def begin_step(self, plan: StepPlan) -> None:
        """Reset the step's rows; hooks on at the steps that record them."""
        self.rows = []
        self.vals = []
        self.on = self.needed and plan.any_due(TIME_STATS)
        self.hooks.switch(self.on or plan.persistent)

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
                ends = torch.stack([
                    torch.linalg.vector_norm(g.select(time_dim, 0), dtype=F32),
                    torch.linalg.vector_norm(g.select(time_dim, steps - 1), dtype=F32),
                ])
                self.rows.append((li, steps))
                self.vals.append(ends)
            except Exception as exc:  # noqa: BLE001 - never take training down
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
        rec.emit("time", tuple(self.rows), norms)

    def remove(self) -> None:
        """Remove the hooks."""
        self.hooks.remove()
        self._fn_cache.clear()
