"""The activation hooks of the Monitor's hot path (see :mod:`gradwatch.monitor.hooks`).

A small activation's hook keeps a reference; when the model's forward pass returns, the
same-shape ones are stacked into a buffer kept across steps and reduced together (one kernel
per statistic for all of them, :func:`gradwatch.stats.activation.reduce_stacked`). A large
one is reduced inside its hook. Later calls of a step add into an accumulator.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from gradwatch.monitor.hookkit import FAST_DTYPES
from gradwatch.stats.activation import (
    FAMILY_CODE,
    STACK_ACT_MAX,
    act_row,
    applicable,
    detail_into,
    reduce_stacked,
    unit_dim,
)
from gradwatch.stats.numeric import Stacked

F32 = torch.float32
#: Most memory the activation stacking buffers may hold (beyond it: one at a time).
STACK_BUFFER_BYTES = 64 << 20
#: Most elements of kept activations before they are reduced, even mid-forward: activations
#: that autograd does not keep (one followed by dropout, say) are then held no longer.
PENDING_MAX = 1 << 24


class ActivationHooks:
    """Mixin of :class:`~gradwatch.monitor.Monitor`: activation statistics in the hot path."""

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
                        self._act_pend_n += n
                        units = (
                            a.shape[unit_dim(a.dim(), cf)]
                            if self._act_detail and fam == "rectifier" and a.dim() >= 2 else 1
                        )
                    else:
                        units = self._act_into(row, a.detach(), fam, cf)
                    act.stamp[row] = self._step
                    act.called.append(row)
                    self._act_n[row] = [n, units]
                    if self._act_pend_n > PENDING_MAX:
                        self.reduce_activations()  # a very deep model: do not hold them all
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
        self._act_pend_n = 0
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
            # a copy of ours: the saturation count overwrites it in place
            copy = st.fill([a for _, a in items])
            sums, norms, sat, dead = reduce_stacked(copy, fam, cf, self._act_detail)
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
            held = sum(b.nbytes for b in self._act_bufs.values())
            if held + size > STACK_BUFFER_BYTES:
                if size > STACK_BUFFER_BYTES // 2:
                    return None
                self._act_bufs.clear()  # shapes changed (new batch size, say): start over
            st = self._act_bufs[key] = Stacked(shape[0], shape[1:], dtype, device)
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
