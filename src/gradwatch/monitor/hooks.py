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
  gradient of its input sequence and keeps its norms at the first and last time step
  (:mod:`gradwatch.stats.temporal`);
- a later call of the same layer or activation in one step (shared modules, recurrent cells,
  gradient accumulation) adds into a per-row accumulator: memory does not grow with the
  number of micro-batches.

Which hooks are present follows the schedule: a module without hooks takes PyTorch's fast
call path, so unrecorded and non-detail steps cost nothing. Under ``torch.compile`` the hooks
stay registered for good (adding and removing hooks would make Dynamo recompile) and return
at once while compiling. Nothing here reads a device value on the host.
"""

from __future__ import annotations

import math
import warnings
from collections import OrderedDict
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from gradwatch.stats.activation import (
    FAMILY_CODE,
    STACK_ACT_MAX,
    act_row,
    applicable,
    detail_into,
    reduce_stacked,
    unit_dim,
)
from gradwatch.stats.temporal import TIME_STATS

F32 = torch.float32
#: dtypes whose tensors take the in-place (``out=``) path; others take the general one.
FAST_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_CONV = (nn.modules.conv._ConvNd,)
#: From this many elements a float32 gradient's norm is taken with a BLAS dot.
DOT_MIN = 1 << 14
#: Most memory the activation stacking buffers may hold (beyond it: one at a time).
STACK_BUFFER_BYTES = 64 << 20


def _tensors(out: Any) -> Iterable[torch.Tensor]:
    """The tensors in a module output (tensor, or nested tuple/list/dict of them)."""
    if isinstance(out, torch.Tensor):
        yield out
    elif isinstance(out, tuple | list):
        for o in out:
            yield from _tensors(o)
    elif isinstance(out, dict):
        for o in out.values():
            yield from _tensors(o)


def hook_grad(t: torch.Tensor, fn: Any) -> None:
    """Call ``fn(dL/dt)`` when the backward pass reaches ``t`` (a non-leaf tensor).

    What ``Tensor.register_hook`` does, without the removable handle it builds (a weakref and
    an id per call: about a quarter of the hook's cost on a 200-layer MLP). A tensor that
    already has hooks, or a leaf, takes the public path so that nothing is replaced.
    """
    if t._backward_hooks is None and t.grad_fn is not None:
        hooks = OrderedDict()  # as register_hook makes it: a later handle can weakref it
        hooks[-1] = fn  # handle ids count up from 0: no collision
        t._backward_hooks = hooks
        t.grad_fn._register_hook_dict(t)
    else:
        t.register_hook(fn)


def _slots(handles: list[Any], fns: list[Any]) -> list[tuple[Any, int, Any]]:
    """(hook dict, hook id, function) of each registered forward hook."""
    return [(h.hooks_dict_ref(), h.id, fn) for h, fn in zip(handles, fns, strict=True)]


def _switch(slots: list[tuple[Any, int, Any]], on: bool) -> None:
    for hooks, hid, fn in slots:
        if hooks is None:
            continue  # the module is gone
        if on:
            hooks[hid] = fn
        else:
            hooks.pop(hid, None)


class RowBuffer:
    """A growable (rows, width) float32 device buffer with precomputed row views.

    Each row is written in place by the first call of a step (``stamp`` says which step
    last wrote it) and added to by later calls of that step (``extra``).
    """

    def __init__(self, width: int):
        self.width = width
        self.buf: torch.Tensor | None = None
        self.views: list[list[torch.Tensor]] = []
        self.stamp: list[int] = []
        self.extra: dict[int, torch.Tensor] = {}
        self.called: list[int] = []

    def ensure(self, rows: int, device: torch.device) -> None:
        """Have at least ``rows`` rows on ``device`` (reallocated on growth or a move)."""
        buf = self.buf
        if buf is not None and buf.shape[0] >= rows and buf.device == device:
            return
        n = max(rows, 2 * buf.shape[0] if buf is not None else rows)
        new = torch.zeros(n, self.width, dtype=F32, device=device)
        if buf is not None:  # rows written earlier in this step move along
            new[: buf.shape[0]].copy_(buf.to(device))
            self.extra = {k: v.to(device) for k, v in self.extra.items()}
        self.buf = new
        self.views = [list(r.unbind()) for r in new.unbind()]
        self.stamp = self.stamp + [-1] * (n - len(self.stamp))

    def reset(self) -> None:
        """Start a new step (rows are overwritten by their next first call)."""
        self.called = []
        if self.extra:
            self.extra = {}


class HotPath:
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
        self._act_eager: set[int] = set()  # rows reduced inside the hook (changed in place)
        self._act_bufs: dict[tuple, torch.Tensor] = {}  # stacking buffers, by shape
        self._act_rows_of: dict[int, tuple[torch.Tensor, list[torch.Tensor]]] = {}  # their rows
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
        self._time_slots = _slots(time_handles, time_fns)
        self._time_on = True
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
            self._layer_slots = _slots(self._layer_handles, self._layer_fns)
            self._act_slots = _slots(self._act_handles, self._act_fns)
            self._layers_on = self._acts_on = True
        if want_layers != self._layers_on:
            _switch(self._layer_slots, want_layers)
            self._layers_on = want_layers
        want_acts = bool(self._persistent or self._rec_act)
        if want_acts != self._acts_on:
            _switch(self._act_slots, want_acts)
            self._acts_on = want_acts
        want_time = bool(self._persistent or self._rec_time)
        if want_time != self._time_on:
            _switch(self._time_slots, want_time)
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
    def _on_root_forward(self, module: nn.Module, args: Any, kwargs: Any) -> None:
        if torch.compiler.is_compiling():
            self._on_compiled()
            return
        if self._act_pend:
            self.reduce_activations()  # the previous forward pass did not return
        if torch.is_grad_enabled() and not self._replaying:
            self._forward_seen = True
            self._last_layer = -1
            self._inputs = (args, kwargs)  # a reference, for NaN forensics; never copied

    def _on_root_done(self, module: nn.Module, args: Any, out: Any) -> None:
        if self._act_pend and not torch.compiler.is_compiling():
            self.reduce_activations()

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
                for t in _tensors(out):
                    if t.requires_grad:
                        hook_grad(t, bp_fn)

        return on_layer_forward

    def _first_forward(self, li: int, out: Any) -> None:
        """Once per layer: its output shape (batch included) and its execution order."""
        first = next(iter(_tensors(out)), None)
        self._out_shape[li] = list(first.shape) if first is not None else []
        if not self._order_done and li not in self._exec_order:
            self._exec_order.append(li)

    def _make_bp_hook(self, li: int):
        bp = self._bp

        def on_backprop(grad: torch.Tensor) -> None:
            # d loss / d output of layer li: its sum of squares into the layer's slot (first
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
                ends = torch.stack([
                    torch.linalg.vector_norm(g.select(time_dim, 0), dtype=F32),
                    torch.linalg.vector_norm(g.select(time_dim, steps - 1), dtype=F32),
                ])
                self._time_rows.append((li, steps))
                self._time_vals.append(ends)
            except Exception as exc:  # noqa: BLE001 - never take training down
                self._warn_skip("time_grad_first and time_grad_last", exc)

        return on_time_grad

    def _make_act_hook(self, ai: int, fam: str):
        code = FAMILY_CODE[fam]
        act = self._act

        def on_act_forward(module: nn.Module, args: Any, out: Any) -> None:
            if torch.compiler.is_compiling():
                self._on_compiled()
                return
            li = self._last_layer
            if not self._rec_act or li < 0 or not torch.is_grad_enabled() or self._replaying:
                return
            if type(out) is not torch.Tensor or out.numel() == 0:
                return
            try:
                row = self._act_rows.get((ai, li))
                if row is None:
                    row = self._new_act_row(ai, li, code, fam, out)
                a = out
                first = act.stamp[row] != self._step
                if (
                    first
                    and a.dtype in FAST_DTYPES
                    and a.device == act.buf.device
                    and a.layout == torch.strided
                ):
                    cf = self._channels_first[li]
                    n = a.numel()
                    if n <= STACK_ACT_MAX and row not in self._act_eager:
                        # reduced with the other small activations when the forward returns
                        # (detached there, once for all of them)
                        self._act_pend.append((row, a, a._version, fam, cf))
                        units = (
                            a.shape[unit_dim(a.dim(), cf)]
                            if self._act_detail and fam == "rectifier" and a.dim() >= 2 else 1
                        )
                    else:
                        units = self._act_into(row, a.detach(), fam, cf)
                    act.stamp[row] = self._step
                    act.called.append(row)
                    self._act_n[row] = [n, units]
                else:
                    self._act_slow(row, a.detach(), fam, li, first)
            except Exception as exc:  # noqa: BLE001 - never take training down
                self._warn_skip("activation statistics", exc)

        return on_act_forward

    def _act_into(self, row: int, a: torch.Tensor, fam: str, cf: bool) -> int:
        """One activation's statistics into its row, in place; returns its units."""
        v = self._act.views[row]
        torch.sum(a, dim=self._all_dims(a), dtype=F32, out=v[0])
        torch.linalg.vector_norm(a, dtype=F32, out=v[1])  # squared at the step
        if self._act_detail:
            return detail_into(a, fam, cf, v[2], v[3])
        return 1

    def reduce_activations(self) -> None:
        """Reduce the small activations kept since the forward pass began, then drop them.

        Same-shape ones are stacked into a buffer kept for the next steps and reduced in one
        kernel per statistic; their values go into their rows with one ``index_copy_`` per
        column.
        """
        pend, self._act_pend = self._act_pend, []
        try:
            with torch.no_grad():
                self._reduce_pending(pend)
        except Exception as exc:  # noqa: BLE001 - never take training down
            self._warn_skip("activation statistics", exc)
            gone = {row for row, *_ in pend}  # their rows hold no value of this step
            self._act.called = [r for r in self._act.called if r not in gone]

    def _reduce_pending(self, pend: list[tuple]) -> None:
        """Group the kept activations by shape and reduce each group (see above)."""
        groups: dict[tuple, list[tuple[int, torch.Tensor]]] = {}
        for row, a, version, fam, cf in pend:
            if a._version != version:
                # changed in place since its module ran: not recorded at this step, and
                # reduced inside its hook from now on
                self._act_eager.add(row)
                self._act.called.remove(row)
                self._act.stamp[row] = -1
                self._act_n.pop(row, None)
                continue
            groups.setdefault((a.shape, a.dtype, fam, cf), []).append((row, a))
        buf = self._act.buf
        for (shape, dtype, fam, cf), items in groups.items():
            if len(items) == 1:
                self._act_into(items[0][0], items[0][1], fam, cf)
                continue
            st = self._stack_buffer((len(items), *shape), dtype, buf.device)
            if st is None:  # past the memory cap: one at a time
                for row, a in items:
                    self._act_into(row, a, fam, cf)
                continue
            rows = self._act_rows_of.get(id(st))
            if rows is None or rows[0] is not st:
                rows = self._act_rows_of[id(st)] = (st, list(st.unbind()))
            torch._foreach_copy_(rows[1], [a for _, a in items])  # faster than stack(out=)
            # the stacked copy is ours: the saturation count may overwrite it in place
            sums, norms, sat, dead = reduce_stacked(
                st, fam, cf, self._act_detail, lambda st=st: st
            )
            idx = self._index([r for r, _ in items], buf.device)
            buf[:, 0].index_copy_(0, idx, sums)
            buf[:, 1].index_copy_(0, idx, norms)
            if sat is not None:
                buf[:, 2].index_copy_(0, idx, sat)
            if dead is not None:
                buf[:, 3].index_copy_(0, idx, dead)

    def _stack_buffer(self, shape: tuple, dtype: torch.dtype, device: torch.device):
        """The stacking buffer for ``shape`` (kept), or None past ``STACK_BUFFER_BYTES``."""
        key = (shape, dtype, device)
        st = self._act_bufs.get(key)
        if st is None:
            size = math.prod(shape) * dtype.itemsize
            held = sum(b.numel() * b.element_size() for b in self._act_bufs.values())
            if held + size > STACK_BUFFER_BYTES:
                if size > STACK_BUFFER_BYTES // 2:
                    return None
                self._act_bufs.clear()  # shapes changed (new batch size, say): start over
                self._act_rows_of.clear()
            st = self._act_bufs[key] = torch.empty(shape, dtype=dtype, device=device)
        return st

    _DIMS: dict[int, tuple[int, ...]] = {}

    def _all_dims(self, a: torch.Tensor) -> tuple[int, ...]:
        dims = self._DIMS.get(a.dim())
        if dims is None:
            dims = self._DIMS[a.dim()] = tuple(range(a.dim()))
        return dims

    def _new_act_row(self, ai: int, li: int, code: int, fam: str, out: torch.Tensor) -> int:
        row = len(self._act_meta)
        self._act_rows[(ai, li)] = row
        self._act_meta.append((li, code))
        self._act.ensure(row + 1, out.device)
        # the columns that do not apply to this family stay NaN for good
        sat_ok, dead_ok = applicable(fam)
        if not sat_ok:
            self._act.buf[row, 2] = float("nan")
        if not dead_ok:
            self._act.buf[row, 3] = float("nan")
        return row

    def _act_slow(self, row: int, a: torch.Tensor, fam: str, li: int, first: bool) -> None:
        """General path: other dtypes or devices, and later calls of a step (accumulated)."""
        from gradwatch.stats.numeric import dense_real

        d = dense_real(a)
        if d is None:
            self._warn_skip(f"activation statistics of {a.layout}/{a.device.type} outputs")
            return
        vals, units = act_row(d, fam, self._channels_first[li], self._act_detail)
        vals = vals.to(self._act.buf.device)
        vals[1] = vals[1].sqrt()  # stored as a norm, like the in-place path
        act = self._act
        if first:
            act.buf[row].copy_(vals)
            act.stamp[row] = self._step
            act.called.append(row)
            self._act_n[row] = [a.numel(), units]
            return
        # a later call of this step: add sums, squares and counts; elements and units grow
        sq = torch.stack([vals[0], vals[1].square(), vals[2], vals[3]])
        prev = act.extra.get(row)
        act.extra[row] = sq if prev is None else prev + sq
        n = self._act_n[row]
        n[0] += a.numel()
        n[1] += units
