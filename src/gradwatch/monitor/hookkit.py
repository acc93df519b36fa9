"""Small pieces of the taps' hot path: gradient hooks, switchable module hooks, row buffers."""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Iterable
from typing import Any

import torch

from gradwatch.stats.numeric import Stacked

F32 = torch.float32
#: dtypes whose tensors take the in-place (``out=``) path; others take the general one.
FAST_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def tensors_in(out: Any) -> Iterable[torch.Tensor]:
    """The tensors in a module output (tensor, or nested tuple/list/dict of them)."""
    if isinstance(out, torch.Tensor):
        yield out
    elif isinstance(out, tuple | list):
        for o in out:
            yield from tensors_in(o)
    elif isinstance(out, dict):
        for o in out.values():
            yield from tensors_in(o)


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


class HookSet:
    """Module hooks registered once and switched on or off by the schedule.

    Switching a hook off takes its function out of the module's hook dict and switching it
    on puts it back: a dict operation instead of a new handle per module per toggle. A module
    whose hook dicts are empty takes PyTorch's fast call path, so a step that needs none of
    a tap's hooks costs nothing for them.
    """

    def __init__(self) -> None:
        self.handles: list[Any] = []
        self._slots: list[tuple[Any, int, Any]] = []
        self.on = True

    def forward(self, modules: Iterable[Any], fns: Iterable[Any], pre: bool = False) -> None:
        """Register ``fns[i]`` as a forward hook (``pre``: forward pre-hook) of ``modules[i]``."""
        for module, fn in zip(modules, fns, strict=True):
            h = module.register_forward_pre_hook(fn) if pre else module.register_forward_hook(fn)
            self.add(h, fn)

    def add(self, handle: Any, fn: Any) -> None:
        """Manage a hook registered elsewhere (its handle and its function)."""
        self.handles.append(handle)
        self._slots.append((handle.hooks_dict_ref(), handle.id, fn))
        if not self.on:
            self._switch_one(self._slots[-1], False)

    def switch(self, on: bool) -> None:
        """Put the hook functions back into their modules' dicts, or take them out."""
        on = bool(on)
        if on == self.on:
            return
        self.on = on
        for slot in self._slots:
            self._switch_one(slot, on)

    @staticmethod
    def _switch_one(slot: tuple[Any, int, Any], on: bool) -> None:
        hooks, hid, fn = slot
        if hooks is None:
            return  # the module is gone
        if on:
            hooks[hid] = fn
        else:
            hooks.pop(hid, None)

    def remove(self) -> None:
        """Remove every hook for good."""
        for h in self.handles:
            h.remove()
        self.handles.clear()
        self._slots.clear()


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

    def gather(self, index: Any) -> tuple[list[int], torch.Tensor] | None:
        """(rows written this step, their values) with one ``index_select``, or None.

        ``index(rows, device)`` gives the rows' index tensor (``TapContext.index``).
        """
        if not self.called or self.buf is None:
            return None
        return self.called, self.buf.index_select(0, index(self.called, self.buf.device))

    def reset(self) -> None:
        """Start a new step (rows are overwritten by their next first call)."""
        self.called = []
        if self.extra:
            self.extra = {}


class StackPool:
    """Stacking buffers kept across steps, one per (shape, dtype, device), under a byte cap.

    :meth:`get` returns the :class:`~gradwatch.stats.numeric.Stacked` buffer for a shape, or
    None when it alone would take more than half the cap (the caller then goes one tensor at
    a time). When the shapes change (a new batch size, say) and the cap would be passed, the
    pool starts over.
    """

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self._bufs: dict[tuple, Stacked] = {}

    def get(self, shape: tuple, dtype: torch.dtype, device: torch.device) -> Stacked | None:
        """The buffer for ``shape`` (kept), or None past the cap."""
        key = (shape, dtype, device)
        st = self._bufs.get(key)
        if st is None:
            size = math.prod(shape) * dtype.itemsize
            held = sum(b.nbytes for b in self._bufs.values())
            if held + size > self.max_bytes:
                if size > self.max_bytes // 2:
                    return None
                self._bufs.clear()
            st = self._bufs[key] = Stacked(shape[0], shape[1:], dtype, device)
        return st
