"""The activation tap: ``act_mean``, ``act_std``, ``saturated_frac``, ``dead_frac``.

A forward hook on each activation module (nn.ReLU, nn.Tanh, ...) attaches its output to the
layer that ran just before it (``ctx.tracker.last_layer``). A small activation's hook keeps a
reference; when the model's forward pass returns, the same-shape ones are stacked into a
buffer kept across steps and reduced together (one kernel per statistic for all of them,
:func:`gradwatch.stats.activation.reduce_stacked`; on CPU, with the compiled kernels of
:mod:`gradwatch.stats.native`, all statistics of all of them in one call and one read, no
copy). A large one is reduced inside its hook. The values go into the rows of a preallocated
buffer; no activation outlives the forward pass that made it. One changed in place after its
module ran is not recorded at that step and is reduced inside its hook from then on. Later
calls of a step (micro-batches, shared modules) add into an accumulator.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from gradwatch.monitor.actrows import CompiledRows
from gradwatch.monitor.hookkit import FAST_DTYPES, HookSet, RepeatPlan, RowBuffer, StackPool
from gradwatch.monitor.sharding import local_part
from gradwatch.monitor.tap import Record, StepPlan, Tap, register_tap
from gradwatch.stats.activation import (
    FAMILY_CODE,
    STACK_ACT_MAX,
    act_row,
    all_dims,
    applicable,
    detail_into,
    reduce_stacked,
    unit_dim,
)
from gradwatch.stats.numeric import dense_real

F32 = torch.float32
_CONV = (nn.modules.conv._ConvNd,)
#: Most memory the activation stacking buffers may hold (beyond it: one at a time).
STACK_BUFFER_BYTES = 64 << 20
#: Most elements of kept activations before they are reduced, even mid-forward: activations
#: that autograd does not keep (one followed by dropout, say) are then held no longer.
PENDING_MAX = 1 << 24


@register_tap
class ActivationTap(Tap):
    """Activation statistics per activation module, attached to the layer before it."""

    name = "act"
    sources = ("act",)

    def install(self) -> None:
        """One forward hook per activation module (when activation statistics are asked for)."""
        self.active = self.needed
        ctx = self.ctx
        self.buf = RowBuffer(4)
        self.rows: dict[int, dict[int, int]] = {}  # activation -> {layer -> row}
        self.row_meta: list[tuple[int, int]] = []  # row -> (layer, family code)
        # row -> (family, channels first, family code, rectifier)
        self.row_info: list[tuple[str, bool, int, bool]] = []
        self.counts: dict[int, list[int]] = {}  # row -> [elements, units] in the step
        self.pending: list[tuple] = []  # (row, tensor, its version when kept)
        self.pending_n = 0  # elements held in pending
        self.eager: set[int] = set()  # rows reduced inside the hook (changed in place)
        self.stacks = StackPool(STACK_BUFFER_BYTES)  # stacking buffers, by shape
        self.channels_first = [isinstance(ly.module, _CONV) for ly in ctx.layers]
        self.on = self.detail = False
        self.step = -1
        self.repeat = RepeatPlan()  # the last step's block key, while the rows repeat
        self.compiled = CompiledRows(ctx.index)  # rows by the compiled kernels (CPU)
        self.hooks = HookSet()
        acts = ctx.activations if self.needed else []
        self.hooks.forward([m for _, m, _ in acts],
                           [self._make_hook(ai, fam) for ai, (_, _, fam) in enumerate(acts)])
        self.has_acts = bool(acts)

    def begin_step(self, plan: StepPlan) -> None:
        """Reset the rows; hooks on at the steps that record activations."""
        self.buf.reset()
        self.pending = []
        self.pending_n = 0
        self.counts = {}
        self.step = plan.step
        self.on = plan.recorded and self.needed and (
            plan.detail or not plan.tiered(("act_mean", "act_std")))
        self.detail = plan.detail and bool({"saturated_frac", "dead_frac"} & plan.wanted)
        self.track_layers = self.on and self.has_acts
        self.hooks.switch(self.on or plan.persistent)

    def on_forward(self, args: Any, kwargs: Any) -> None:
        """Reduce what a forward pass that never returned left behind."""
        if self.pending:
            self.reduce()  # the previous forward pass did not return

    def on_forward_done(self, args: Any, out: Any) -> None:
        """Reduce the small activations kept during the forward pass."""
        if self.pending:
            self.reduce()

    def _make_hook(self, ai: int, fam: str):
        code = FAMILY_CODE[fam]
        act = self.buf
        ctx = self.ctx
        tracker = ctx.tracker
        rows = self.rows.setdefault(ai, {})  # layer -> row of this activation module
        compiling, grad_on, strided = torch.compiler.is_compiling, torch.is_grad_enabled, \
            torch.strided

        def on_act_forward(module: nn.Module, args: Any, out: Any) -> None:
            # the hot path of a detail step: the first call of a row keeps a reference to a
            # small activation; its element and unit counts are read when it is reduced
            if compiling():
                ctx.on_compiled()
                return
            li = tracker.last_layer
            if not self.on or li < 0 or not grad_on() or ctx.replaying:
                return
            if type(out) is not torch.Tensor:  # a DTensor: this rank's part (None: not one)
                out = local_part(out)
            if out is None or (n := out.numel()) == 0:
                return
            try:
                row = rows.get(li)
                if row is None:
                    row = self._new_row(ai, li, code, fam, out)
                first = act.stamp[row] != self.step
                if (first and out.dtype in FAST_DTYPES and out.layout == strided
                        and out.device == act.buf.device):
                    if n <= STACK_ACT_MAX and row not in self.eager:
                        # reduced with the other small activations when the forward returns
                        # (detached there, once for all of them)
                        self.pending.append((row, out, out._version))
                        self.pending_n += n
                    else:
                        self.counts[row] = [n, self._into(row, out.detach(), fam,
                                                          self.channels_first[li])]
                    act.stamp[row] = self.step
                    act.called.append(row)
                    if self.pending_n > PENDING_MAX:
                        self.reduce()  # a very deep model: do not hold them all
                else:
                    self._slow(row, out.detach(), fam, li, first)
            except Exception as exc:  # noqa: BLE001 - never take training down
                ctx.warn("activation statistics", exc)

        return on_act_forward

    def _into(self, row: int, a: torch.Tensor, fam: str, cf: bool) -> int:
        """One activation's statistics into its row, in place; returns its units."""
        units = (a.shape[unit_dim(a.dim(), cf)]
                 if self.detail and fam == "rectifier" and a.dim() >= 2 else 1)
        ud = unit_dim(a.dim(), cf) if fam == "rectifier" and a.dim() >= 2 else -1
        if self.compiled.into(self.buf.buf, [row], [a], [FAMILY_CODE[fam]], [ud], self.detail):
            return units
        v = self.buf.views[row]
        torch.sum(a, dim=all_dims(a), dtype=F32, out=v[0])
        torch.linalg.vector_norm(a, dtype=F32, out=v[1])  # squared at the step
        if self.detail:
            return detail_into(a, fam, cf, v[2], v[3])
        return 1

    def reduce(self) -> None:
        """Reduce the small activations kept since the forward pass began, then drop them."""
        pend, self.pending = self.pending, []
        self.pending_n = 0
        try:
            with torch.no_grad():
                self._reduce(pend)
        except Exception as exc:  # noqa: BLE001 - never take training down
            self.ctx.warn("activation statistics", exc)
            gone = {row for row, *_ in pend}  # their rows hold no value of this step
            self.buf.called = [r for r in self.buf.called if r not in gone]

    def _reduce(self, pend: list[tuple]) -> None:
        """Reduce the kept activations: all at once (compiled), or by shape group (torch)."""
        buf = self.buf.buf
        if self.compiled.repeat(pend, self.detail, buf):  # checked and reduced in one call
            self.counts.update(self.compiled.counts)  # the learnt step's pass again
            return
        keep = []
        counts, info, detail = self.counts, self.row_info, self.detail
        for row, a, version in pend:
            if a._version != version:
                # changed in place since its module ran: not recorded at this step, and
                # reduced inside its hook from now on
                self.eager.add(row)
                self.buf.called.remove(row)
                self.buf.stamp[row] = -1
                continue
            fam, cf, code, rect = info[row]
            ud = unit_dim(a.dim(), cf) if rect and a.dim() >= 2 else -1
            counts[row] = [a.numel(), a.shape[ud] if detail and ud >= 0 else 1]
            keep.append((row, a, version, fam, cf, code, ud))
        rows, acts, codes, dims = ([it[i] for it in keep] for i in (0, 1, 5, 6))
        if not keep or self.compiled.into(buf, rows, acts, codes, dims, detail):
            if keep and len(keep) == len(pend):  # the next steps' passes may repeat this one
                self.compiled.learn(rows, acts, codes, dims, detail, buf, counts)
            return
        groups: dict[tuple, list[tuple[int, torch.Tensor]]] = {}
        for row, a, _, fam, cf, _, _ in keep:
            groups.setdefault((a.shape, a.dtype, fam, cf), []).append((row, a))
        for (shape, dtype, fam, cf), items in groups.items():
            if len(items) == 1:
                self._into(items[0][0], items[0][1], fam, cf)
                continue
            st = self.stacks.get((len(items), *shape), dtype, buf.device)
            if st is None:  # past the memory cap: one at a time
                for row, a in items:
                    self._into(row, a, fam, cf)
                continue
            # a copy of ours: the saturation count overwrites it in place
            copy = st.fill([a for _, a in items])
            idx = self.ctx.index([r for r, _ in items], buf.device)
            # sums, norms, saturated counts and dead units (None where not taken)
            for col, vals in enumerate(reduce_stacked(copy, fam, cf, self.detail)):
                if vals is not None:
                    buf[:, col].index_copy_(0, idx, vals)

    def _new_row(self, ai: int, li: int, code: int, fam: str, out: torch.Tensor) -> int:
        row = len(self.row_meta)
        self.rows[ai][li] = row
        self.row_meta.append((li, code))
        self.row_info.append((fam, self.channels_first[li], code, fam == "rectifier"))
        self.buf.ensure(row + 1, out.device)
        # the columns that do not apply to this family stay NaN for good
        sat_ok, dead_ok = applicable(fam)
        if not sat_ok:
            self.buf.buf[row, 2] = float("nan")
        if not dead_ok:
            self.buf.buf[row, 3] = float("nan")
        return row

    def _slow(self, row: int, a: torch.Tensor, fam: str, li: int, first: bool) -> None:
        """General path: other dtypes or devices, and later calls of a step (accumulated)."""
        if not first and row not in self.counts:
            self.reduce()  # the first call is still kept: its counts are read now
            first = self.buf.stamp[row] != self.step  # it changed in place: start over
        d = dense_real(a)
        if d is None:
            self.ctx.warn(f"activation statistics of {a.layout}/{a.device.type} outputs")
            return
        vals, units = act_row(d, fam, self.channels_first[li], self.detail)
        vals = vals.to(self.buf.buf.device)
        vals[1] = vals[1].sqrt()  # stored as a norm, like the in-place path
        act = self.buf
        if first:
            act.buf[row].copy_(vals)
            act.stamp[row] = self.step
            act.called.append(row)
            self.counts[row] = [a.numel(), units]
            return
        # a later call of this step: add sums, squares and counts; elements and units grow
        sq = torch.stack([vals[0], vals[1].square(), vals[2], vals[3]])
        prev = act.extra.get(row)
        act.extra[row] = sq if prev is None else prev + sq
        n = self.counts[row]  # a new list: the last step's plan may share the old one
        self.counts[row] = [n[0] + a.numel(), n[1] + units]

    def collect(self, rec: Record) -> None:
        """The rows written this step as one ``act`` block."""
        if self.pending:
            self.reduce()  # a submodule ran without the model's own forward
        rows = self.buf.called
        if not rows or self.buf.buf is None:
            return
        flat = self.compiled.gather(self.buf.buf, rows, self.detail)  # one call, on CPU
        if flat is None:
            vals = self.buf.buf.index_select(0, self.ctx.index(rows, self.buf.buf.device))
            vals[:, 1] = vals[:, 1].square()
            if not self.detail:
                vals[:, 2:] = float("nan")
            flat = vals.reshape(-1)
        if self.buf.extra:
            vals = flat.view(-1, 4)
            for row, extra in self.buf.extra.items():
                j = rows.index(row)
                vals[j] = vals[j] + extra
        rec.emit("act", self.repeat.key(rows, self.row_meta, self.counts), flat)

    def remove(self) -> None:
        """Remove the hooks and drop the kept activations and stacking buffers."""
        self.hooks.remove()
        self.pending = []
        self.pending_n = 0
        self.stacks = StackPool(STACK_BUFFER_BYTES)

