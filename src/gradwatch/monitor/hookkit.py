"""Small pieces of the taps' hot path: gradient hooks, switchable module hooks, row buffers.

And hooks that copies leave behind: every module (and optimizer) hook a Monitor registers
goes through :func:`own`, so that ``copy.deepcopy``, ``pickle`` and ``torch.save`` of a
watched model (an EMA or SWA copy, a best-model snapshot) carry none of them. PyTorch keeps a
module's hooks in ``OrderedDict`` attributes that a copy duplicates; while a Monitor is open,
a reducer registered with :mod:`copyreg` (the documented way to tell ``copy`` and ``pickle``
how to reduce a type) leaves the Monitor's entries out of those dicts, and only of those:
any other dict is reduced as Python would. The copy is then a plain, unwatched model, and a
pickle of it names nothing of gradwatch.
"""

from __future__ import annotations

import copyreg
import math
import threading
import weakref
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

    While the set is *held* (:meth:`hold`: another pass, such as ``gw.check``, runs on the
    model) every hook is out of its dict whatever the schedule asks; :meth:`switch` only
    notes what the step wants, and releasing the hold applies it.
    """

    def __init__(self) -> None:
        self.handles: list[Any] = []
        self._slots: list[tuple[Any, int, Any]] = []
        self.on = True
        self.held = False

    def forward(self, modules: Iterable[Any], fns: Iterable[Any], pre: bool = False) -> None:
        """Register ``fns[i]`` as a forward hook (``pre``: forward pre-hook) of ``modules[i]``."""
        for module, fn in zip(modules, fns, strict=True):
            h = module.register_forward_pre_hook(fn) if pre else module.register_forward_hook(fn)
            self.add(h, fn)

    def add(self, handle: Any, fn: Any) -> None:
        """Manage a hook registered elsewhere (its handle and its function); copies leave it out."""
        self.handles.append(own(handle))
        self._slots.append((handle.hooks_dict_ref(), handle.id, fn))
        if not self.on or self.held:
            self._switch_one(self._slots[-1], False)

    def switch(self, on: bool) -> None:
        """Put the hook functions back into their modules' dicts, or take them out."""
        on = bool(on)
        if on == self.on:
            return
        self.on = on
        if self.held:
            return  # applied when the hold is released
        for slot in self._slots:
            self._switch_one(slot, on)

    def hold(self, held: bool) -> None:
        """Take every hook out while ``held`` (whatever :meth:`switch` asks); then restore."""
        held = bool(held)
        if held == self.held:
            return
        self.held = held
        if self.on:
            for slot in self._slots:
                self._switch_one(slot, not held)

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
        disown(self.handles)
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


class RepeatPlan:
    """The block key of the last step's rows, reused while the rows and their counts repeat.

    The steady state of training: each step's forward pass keeps the same rows with the same
    counts, so the step's block key is the last step's and costs no Python work per row.
    """

    __slots__ = ("_key",)

    def __init__(self) -> None:
        self._key: tuple | None = None

    def key(self, rows: list[int], meta: list[tuple], counts: dict[int, list[int]]) -> tuple:
        """The block key ``((*meta[r], *counts[r]) for r in rows)``, the last one if equal."""
        got = [counts[r] for r in rows]
        last = self._key
        if last is not None and rows == last[0] and got == last[1]:
            return last[2]
        key = tuple((*meta[r], *n) for r, n in zip(rows, got, strict=True))
        self._key = (list(rows), got, key)
        return key


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


# ------------------------------------------------------------------ hooks copies leave out
_OWN: dict[int, tuple[weakref.ref, set[int]]] = {}  # id(hook dict) -> (the dict, our ids)
_OWN_LOCK = threading.Lock()
_PREVIOUS_REDUCER: Any = None  # what copyreg had for OrderedDict before us (normally none)
_INSTALLED = False


def _dict_refs(handle: Any) -> tuple[Any, ...]:
    """The weak references to the hook dicts a ``RemovableHandle`` removes its hook from."""
    return (handle.hooks_dict_ref, *getattr(handle, "extra_dict_ref", ()))


def own(handle: Any) -> Any:
    """Mark a hook as a Monitor's: copies and pickles of its module leave it out.

    Args:
        handle: the ``RemovableHandle`` PyTorch returned for the hook (module forward hooks
            and pre-hooks, optimizer step hooks).

    Returns:
        ``handle``.
    """
    global _INSTALLED
    with _OWN_LOCK:
        for ref in _dict_refs(handle):
            hooks = ref()
            if hooks is None:
                continue
            entry = _OWN.get(id(hooks))
            if entry is None or entry[0]() is not hooks:
                entry = _OWN[id(hooks)] = (weakref.ref(hooks), set())
            entry[1].add(handle.id)
        if not _INSTALLED:
            _install_reducer()
    return handle


def disown(handles: Iterable[Any]) -> None:
    """Forget hooks that are being removed; the last one takes the reducer away."""
    with _OWN_LOCK:
        for handle in handles:
            for ref in _dict_refs(handle):
                hooks = ref()
                entry = _OWN.get(id(hooks)) if hooks is not None else None
                if entry is not None and entry[0]() is hooks:
                    entry[1].discard(handle.id)
                    if not entry[1]:
                        del _OWN[id(hooks)]
        for key in [k for k, (ref, _) in _OWN.items() if ref() is None]:
            del _OWN[key]  # dicts of modules that are gone
        if not _OWN and _INSTALLED:
            _remove_reducer()


def _reduce_ordered_dict(d: OrderedDict) -> Any:
    """How copy and pickle reduce an OrderedDict: without a Monitor's hooks, if any."""
    entry = _OWN.get(id(d))
    if entry is not None and entry[0]() is d and any(k in entry[1] for k in d):
        d = OrderedDict((k, v) for k, v in d.items() if k not in entry[1])
    if _PREVIOUS_REDUCER is not None:
        return _PREVIOUS_REDUCER(d)
    return d.__reduce__()


def _install_reducer() -> None:
    global _INSTALLED, _PREVIOUS_REDUCER
    _PREVIOUS_REDUCER = copyreg.dispatch_table.get(OrderedDict)
    copyreg.pickle(OrderedDict, _reduce_ordered_dict)
    _INSTALLED = True


def _remove_reducer() -> None:
    global _INSTALLED, _PREVIOUS_REDUCER
    if copyreg.dispatch_table.get(OrderedDict) is _reduce_ordered_dict:
        if _PREVIOUS_REDUCER is None:
            del copyreg.dispatch_table[OrderedDict]
        else:
            copyreg.dispatch_table[OrderedDict] = _PREVIOUS_REDUCER
    _PREVIOUS_REDUCER = None
    _INSTALLED = False
