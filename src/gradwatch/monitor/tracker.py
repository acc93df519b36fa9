"""One forward hook per layer, shared by the taps: which layer ran last, and each layer's output.

The activation tap attaches an activation to the layer that ran just before it
(``last_layer``); the back-propagated tap hangs a gradient hook on each layer's output. Both
go through this one hook per layer (one Python call per layer, however many taps listen), and
it is switched off at steps no tap needs it. The first recorded forward of each layer also
gives its output shape and the layers' execution order, which ``meta.json`` records.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from gradwatch.monitor.hookkit import HookSet, tensors_in


class LayerTracker:
    """The per-layer forward hooks of a Monitor (see the module docstring).

    Attributes:
        last_layer: index of the layer whose forward ran last in this forward pass (-1).
        out_shape: layer index -> its first tensor output's shape at its first recorded call.
        exec_order: layer indices in the order their forward first ran.
        listeners: the functions ``fn(li, out)`` called for each layer output at this step.
    """

    def __init__(self, ctx: Any):
        self.ctx = ctx
        self.last_layer = -1
        self.out_shape: dict[int, list[int]] = {}
        self.exec_order: list[int] = []
        self.order_done = False
        self.listeners: tuple = ()
        self.listener: Any = None  # the one function to call (a fan-out when several listen)
        self.hooks = HookSet()

    def install(self) -> None:
        """Register the per-layer forward hooks (built once per layer)."""
        layers = self.ctx.layers
        fns = [self._make(li) for li in range(len(layers))]
        self.hooks.forward([ly.module for ly in layers], fns)

    def _make(self, li: int):
        ctx = self.ctx
        tracker = self

        def on_layer_forward(module: nn.Module, args: Any, out: Any) -> None:
            if torch.compiler.is_compiling():
                ctx.on_compiled()
                return
            tracker.last_layer = li
            if li not in tracker.out_shape and not ctx.replaying:
                tracker.first_forward(li, out)
            fn = tracker.listener
            if fn is not None:
                fn(li, out)

        return on_layer_forward

    def first_forward(self, li: int, out: Any) -> None:
        """Once per layer: its output shape (batch included) and its execution order."""
        first = next(iter(tensors_in(out)), None)
        self.out_shape[li] = list(first.shape) if first is not None else []
        if not self.order_done and li not in self.exec_order:
            self.exec_order.append(li)

    def begin_step(self, taps: list[Any], persistent: bool) -> None:
        """Switch the hooks for the pending step: on if a tap listens or needs ``last_layer``."""
        self.listeners = tuple(t.layer_output_fn or t.on_layer_output
                               for t in taps if t.layer_outputs)
        self.listener = (
            None if not self.listeners
            else self.listeners[0] if len(self.listeners) == 1 else self._fan_out
        )
        want = persistent or bool(self.listeners) or any(t.track_layers for t in taps)
        self.hooks.switch(want)

    def _fan_out(self, li: int, out: Any) -> None:
        for fn in self.listeners:
            fn(li, out)

    def step_recorded(self) -> None:
        """A step was recorded: the execution order seen so far is final."""
        if self.exec_order:
            self.order_done = True

    def remove(self) -> None:
        """Remove the hooks."""
        self.hooks.remove()
