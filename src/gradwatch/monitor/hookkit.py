"""Small pieces of the Monitor's hot path: hook installation, hook switching, row buffers."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from typing import Any

import torch

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


def hook_slots(handles: list[Any], fns: list[Any]) -> list[tuple[Any, int, Any]]:
    """(hook dict, hook id, function) of each registered forward hook."""
    return [(h.hooks_dict_ref(), h.id, fn) for h, fn in zip(handles, fns, strict=True)]


def switch_hooks(slots: list[tuple[Any, int, Any]], on: bool) -> None:
    """Put registered hook functions back into their modules' dicts, or take them out."""
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
