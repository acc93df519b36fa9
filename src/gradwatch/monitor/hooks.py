"""THE HOT PATH of the Monitor: per-layer and per-activation hooks, written into buffers.

Everything here runs inside the user's forward and backward passes, so it is kept to a few
tensor operations per call and allocates no hook objects per step:

- every hook function is built once, per layer or activation module, when the Monitor is
  made (no ``functools.partial`` per forward);
- the back-propagated signal ‖∂L/∂y‖ is taken by a tensor hook on the layer's output, which
  writes one ``vector_norm`` into its layer's slot of a preallocated device buffer
  (``out=``); of the mechanisms PyTorch offers this was the cheapest measured (see
  :mod:`gradwatch.stats.backprop`);
- activation statistics: a small activation's hook keeps a reference, and when the model's
  forward pass returns the same-shape ones are stacked into a buffer allocated once and
  reduced together (a sum and an L2 norm, and at detail steps the saturated or dead counts:
  one kernel each for all of them); a large one is reduced inside its hook. Either way the
  values go into the rows of a preallocated buffer and no activation tensor outlives the
  forward pass that made it in the Monitor. An activation changed in place after its module
  ran (an in-place op downstream) is not recorded at that step and is reduced inside its
  hook from then on;
- at detail steps, a forward pre-hook on each recurrent layer (``nn.RNNBase``) hooks the
  gradient of its input sequence and keeps its norms at the first and last time step, and
  the root's pre-hook does the same for the model's input when it is a floating
  ``(N, T, F)`` sequence, whatever carries it through time (:mod:`gradwatch.stats.temporal`);
- a later call of the same layer or activation in one step (shared modules, recurrent cells,
  gradient accumulation) adds into a per-row accumulator: memory does not grow with the
  number of micro-batches.

Which hooks are present follows the schedule: a module without hooks takes PyTorch's fast
call path, so unrecorded and non-detail steps cost nothing. Under ``torch.compile`` the hooks
stay registered for good (adding and removing hooks would make Dynamo recompile) and return
at once while compiling. Nothing here reads a device value on the host.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import nn

from gradwatch.monitor.act_hooks import ActivationHooks
from gradwatch.monitor.hookkit import (
    FAST_DTYPES,
    RowBuffer,
    hook_grad,
    hook_slots,
    switch_hooks,
    tensors_in,
)
from gradwatch.monitor.meta import describe_structure
from gradwatch.stats.numeric import Stacked
from gradwatch.stats.temporal import TIME_STATS, scaled_norm

F32 = torch.float32
_CONV = (nn.modules.conv._ConvNd,)
#: From this many elements a float32 gradient's norm is taken with a BLAS dot.
DOT_MIN = 1 << 14


class HotPath(ActivationHooks):
    """Mixin of :class:`~gradwatch.monitor.Monitor`: schedule, hooks and buffers."""

    def _init_hot_path(self) -> None:
        """Build the per-layer hook functions and buffers once; install the root hook."""
        self._last_layer = -1
        self._forward_seen = False
        self._exec_order: list[int] = []
        self._order_done = False
        self._compiled = False  # set when a hook runs inside torch.compile tracing
        self._persistent = False  # hooks stay registered (torch.compile seen)
        self._skip_warned: set[str] = set()
        self._inputs: tuple[Any, Any] | None = None  # reference to the step's last inputs
        self._out_shape: dict[int, list[int]] = {}
        self._bp = RowBuffer(1)
        self._act = RowBuffer(4)
        self._act_rows: dict[tuple[int, int], int] = {}  # (activation, layer) -> row
        self._act_meta: list[tuple[int, int]] = []  # row -> (layer, family code)
        self._act_n: dict[int, list[int]] = {}  # row -> [elements, units] in the step
        self._act_pend: list[tuple] = []  # (row, tensor, version, family, channels first)
        self._act_pend_n = 0  # elements held in _act_pend
        self._act_eager: set[int] = set()  # rows reduced inside the hook (changed in place)
        self._act_bufs: dict[tuple, Stacked] = {}  # stacking buffers, by shape
        self._wanted = set(self.stats)
        self._replaying = False  # a NaN-forensics replay is running: hooks stand aside
        self._idx_cache: dict = {}
        self._flag_cache: dict = {}
        self._channels_first = [isinstance(ly.module, _CONV) for ly in self.layers]
        self._bp_fns = [self._make_bp_hook(li) for li in range(len(self.layers))]
        self._layer_fns = [self._make_layer_hook(li) for li in range(len(self.layers))]
        self._act_fns = [
            self._make_act_hook(ai, fam) for ai, (_, _, fam) in enumerate(self._acts_info)
        ]
        self._layer_handles: list[Any] = []
        self._act_handles: list[Any] = []
        self._handles.append(
            self.model.register_forward_pre_hook(self._on_root_forward, with_kwargs=True)
        )
        self._handles.append(self.model.register_forward_hook(self._on_root_done))
        # gradient through time: a forward pre-hook on each recurrent layer (built once)
        self._time_rows: list[tuple[int, int]] = []  # (layer, T) of each call in the step
        self._time_vals: list[torch.Tensor] = []  # (2,) norms at t = 0 and t = T - 1
        self._time_fn_cache: dict[tuple[int, int, int], Any] = {}
        time_layers = [
            (li, ly.module) for li, ly in enumerate(self.layers)
            if "time" in self._need and isinstance(ly.module, nn.RNNBase)
        ]
        time_fns = [self._make_time_hook(li) for li, _ in time_layers]
        time_handles = [m.register_forward_pre_hook(fn)
                        for (_, m), fn in zip(time_layers, time_fns, strict=True)]
        self._handles += time_handles
        self._time_slots = hook_slots(time_handles, time_fns)
        self._time_on = True
        self._structure_read = False  # the output's graph read for meta["structure"]
        # the model input's flow through time: row len(layers) (the run-level layer "")
        self._time_input = "time" in self._need
        self._time_seq_first = any(
            isinstance(m, nn.RNNBase) and not m.batch_first for m in self.model.modules()
        )
        self._decide(self._step)
        self._sync_hooks()

    # ------------------------------------------------------------------------- schedule
    def _decide(self, step: int) -> None:
        """Decide whether step ``step`` is recorded, in detail, and what it takes."""
        self._rec = bool(self._schedule(step))
        self._detail = self._rec and (self._n_recorded % self.detail_every == 0)
        tiered = self._detail_stats
        self._rec_bp = (
            self._rec
            and "backprop" in self._need
            and (self._detail or "backprop_norm" not in tiered)
        )
        self._rec_act = (
            self._rec
            and "act" in self._need
            and (self._detail or not ({"act_mean", "act_std"} & tiered))
        )
        self._act_detail = self._detail and bool({"saturated_frac", "dead_frac"} & self._wanted)
        self._grad_max = "grad_max_abs" in self.stats and (
            self._detail or "grad_max_abs" not in tiered
        )
        self._rec_time = (
            self._rec and "time" in self._need and (self._detail or not set(TIME_STATS) & tiered)
        )

    def _sync_hooks(self) -> None:
        """Switch the per-layer and per-activation hooks on or off for the pending step.

        The hooks are registered once (their handles live until close); switching one off
        takes its function out of the module's hook dict and switching it on puts it back,
        which costs a dict operation instead of a new handle per layer per toggle. A module
        whose hook dicts are empty takes PyTorch's fast call path.
        """
        want_layers = bool(
            self._persistent or self._rec_bp or (self._rec_act and self._acts_info)
        )
        if not self._layer_handles:
            self._layer_handles = [
                ly.module.register_forward_hook(fn)
                for ly, fn in zip(self.layers, self._layer_fns, strict=True)
            ]
            self._act_handles = [
                module.register_forward_hook(fn)
                for (_, module, _), fn in zip(self._acts_info, self._act_fns, strict=True)
            ]
            self._layer_slots = hook_slots(self._layer_handles, self._layer_fns)
            self._act_slots = hook_slots(self._act_handles, self._act_fns)
            self._layers_on = self._acts_on = True
        if want_layers != self._layers_on:
            switch_hooks(self._layer_slots, want_layers)
            self._layers_on = want_layers
        want_acts = bool(self._persistent or self._rec_act)
        if want_acts != self._acts_on:
            switch_hooks(self._act_slots, want_acts)
            self._acts_on = want_acts
        want_time = bool(self._persistent or self._rec_time)
        if want_time != self._time_on:
            switch_hooks(self._time_slots, want_time)
            self._time_on = want_time

    def _warn_skip(self, what: str, exc: BaseException | None = None) -> None:
        """Warn once per kind of thing the Monitor could not record; training goes on."""
        if what in self._skip_warned:
            return
        self._skip_warned.add(what)
        why = f" ({exc!r})" if exc is not None else ""
        warnings.warn(
            f"gradwatch: {what} could not be recorded{why}; training goes on and the other "
            "statistics are recorded",
            RuntimeWarning,
            stacklevel=4,
        )

    def _on_compiled(self) -> None:
        # Under torch.compile the hooks do nothing (no graph break) and, from now on, stay
        # registered so that Dynamo's guards on them never change.
        self._compiled = True
        self._persistent = True

    # -------------------------------------------------------------------- HOT PATH: hooks
    def _on_root_forward(self, module: nn.Module, args: Any, kwargs: Any) -> Any:
        if torch.compiler.is_compiling():
            self._on_compiled()
            return
        if self._act_pend:
            self.reduce_activations()  # the previous forward pass did not return
        if torch.is_grad_enabled() and not self._replaying:
            self._forward_seen = True
            self._last_layer = -1
            self._inputs = (args, kwargs)  # a reference, for NaN forensics; never copied
            if self._time_input and self._rec_time:
                hooked = self._hook_input_time(args)
                if hooked is not None:
                    return hooked, kwargs
        return None

    def _on_root_done(self, module: nn.Module, args: Any, out: Any) -> None:
        if self._act_pend and not torch.compiler.is_compiling():
            self.reduce_activations()
        if not self._structure_read and not self._replaying and torch.is_grad_enabled():
            # once, at the first forward pass: shortcuts, the residual stream and attention
            # from the output's graph (a loss tensor given to step() adds what the loss is)
            first = next((t for t in tensors_in(out) if t.grad_fn is not None), None)
            if first is not None and not torch.compiler.is_compiling():
                self._structure_read = True
                found = describe_structure(self.model, first)
                if found is not None and not self._structure_from_graph:
                    self._structure = found

    def _make_layer_hook(self, li: int):
        bp_fn = self._bp_fns[li]

        def on_layer_forward(module: nn.Module, args: Any, out: Any) -> None:
            if torch.compiler.is_compiling():
                self._on_compiled()
                return
            self._last_layer = li
            if li not in self._out_shape and not self._replaying:
                self._first_forward(li, out)
            if not self._rec_bp or not torch.is_grad_enabled():
                return
            if type(out) is torch.Tensor:
                if out.requires_grad:
                    hook_grad(out, bp_fn)
            else:
                for t in tensors_in(out):
                    if t.requires_grad:
                        hook_grad(t, bp_fn)

        return on_layer_forward

    def _first_forward(self, li: int, out: Any) -> None:
        """Once per layer: its output shape (batch included) and its execution order."""
        first = next(iter(tensors_in(out)), None)
        self._out_shape[li] = list(first.shape) if first is not None else []
        if not self._order_done and li not in self._exec_order:
            self._exec_order.append(li)

    def _make_bp_hook(self, li: int):
        bp = self._bp

        def on_backprop(grad: torch.Tensor) -> None:
            # d loss / d output of layer li: its norm into the layer's slot (first
            # call of the step) or into its accumulator (later calls)
            try:
                if bp.stamp[li] != self._step if li < len(bp.stamp) else True:
                    if (
                        grad.dtype in FAST_DTYPES
                        and bp.buf is not None
                        and grad.device == bp.buf.device
                        and grad.layout == torch.strided
                        and not grad.requires_grad
                    ):
                        slot = bp.views[li][0]
                        if grad.numel() >= DOT_MIN and grad.dtype == F32 and grad.is_contiguous():
                            # mid-size float32: a BLAS dot (one thread) beats vector_norm's
                            # parallel reduction here (measured: 10 vs 17 us at 32768)
                            flat = grad.view(-1)
                            torch.dot(flat, flat, out=slot).sqrt_()
                        else:
                            torch.linalg.vector_norm(grad, dtype=F32, out=slot)
                        bp.stamp[li] = self._step
                        bp.called.append(li)
                        return
                    self._bp_slow(li, grad, first=True)
                else:
                    self._bp_slow(li, grad, first=False)
            except Exception as exc:  # noqa: BLE001 - never take training down
                self._warn_skip("backprop_norm", exc)

        return on_backprop

    def _bp_slow(self, li: int, grad: torch.Tensor, first: bool) -> None:
        """General path: other dtypes, layouts or devices, and repeated calls of a layer."""
        from gradwatch.stats.numeric import dense_real

        g = dense_real(grad.detach())
        if g is None:
            self._warn_skip(f"backprop_norm of {grad.layout}/{grad.device.type} gradients")
            return
        sq = torch.linalg.vector_norm(g, dtype=torch.float64).to(F32).square()
        if first:
            self._bp.ensure(len(self.layers), g.device)
            self._bp.views[li][0].fill_(0.0)
            self._bp.stamp[li] = self._step
            self._bp.called.append(li)
        prev = self._bp.extra.get(li)
        sq = sq.to(self._bp.buf.device)
        self._bp.extra[li] = sq if prev is None else prev + sq

    def _make_time_hook(self, li: int):
        def on_recurrent_input(module: nn.Module, args: Any) -> Any:
            # the input sequence x of a recurrent layer: hook d loss / d x (PackedSequence,
            # keyword inputs and anything but a dense floating (T, ...) tensor are skipped)
            if torch.compiler.is_compiling():
                self._on_compiled()
                return None
            if not self._rec_time or self._replaying or not torch.is_grad_enabled():
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
                x.register_hook(self._time_grad_hook(li, time_dim, steps))
                return new_args
            except Exception as exc:  # noqa: BLE001 - never take training down
                self._warn_skip("time_grad_first and time_grad_last", exc)
                return None

        return on_recurrent_input

    def _hook_input_time(self, args: Any) -> tuple | None:
        """The model input's flow through time: new args whose first one's gradient is hooked.

        A floating ``(N, T, F)`` (``(T, N, F)`` for sequence-first recurrent layers) first
        argument, T > 1, that does not require grad is replaced by a copy of a leaf that does
        (a copy, so that the model may still change its input in place); one that requires
        grad is hooked as it is. A model whose first layer is a convolution reads a window of
        steps by design and is left out.
        """
        try:
            x = args[0] if args else None
            time_dim = 0 if self._time_seq_first else 1
            if (
                type(x) is not torch.Tensor
                or x.dim() != 3
                or not x.is_floating_point()
                or x.layout != torch.strided
                or x.shape[time_dim] < 2
            ):
                return None
            if self._exec_order and isinstance(self.layers[self._exec_order[0]].module, _CONV):
                return None
            fn = self._time_grad_hook(len(self.layers), time_dim, int(x.shape[time_dim]))
            if x.requires_grad:  # its gradient is computed anyway
                x.register_hook(fn)
                return None
            leaf = x.detach().requires_grad_(True)
            leaf.register_hook(fn)
            return (leaf.clone(), *args[1:])
        except Exception as exc:  # noqa: BLE001 - never take training down
            self._warn_skip("time_grad_first and time_grad_last of the input", exc)
            return None

    def _time_grad_hook(self, li: int, time_dim: int, steps: int):
        # built once per (layer, time axis, sequence length), then reused step after step
        key = (li, time_dim, steps)
        fn = self._time_fn_cache.get(key)
        if fn is None:
            if len(self._time_fn_cache) > 256:
                self._time_fn_cache.clear()
            fn = self._time_fn_cache[key] = self._new_time_grad_hook(li, time_dim, steps)
        return fn

    def _new_time_grad_hook(self, li: int, time_dim: int, steps: int):
        def on_time_grad(grad: torch.Tensor) -> None:
            try:
                g = grad.detach()
                if li == len(self.layers) and self._exec_order and isinstance(
                    self.layers[self._exec_order[0]].module, _CONV
                ):
                    return  # the input went into a convolution first (see _hook_input_time)
                ends = torch.stack([
                    scaled_norm(g.select(time_dim, 0)),
                    scaled_norm(g.select(time_dim, steps - 1)),
                ])
                self._time_rows.append((li, steps))
                self._time_vals.append(ends)
            except Exception as exc:  # noqa: BLE001 - never take training down
                self._warn_skip("time_grad_first and time_grad_last", exc)

        return on_time_grad
