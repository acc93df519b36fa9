"""Public listener API of the watch layer: higher layers tell watching Monitors what they did.

Imports run downward (stats → store → watch → ... → remedies), so a remedy that acts during
training (gradient clipping) cannot reach a Monitor by import. Instead the remedy calls
:func:`notify_clip` — a function of this lower layer — and every live Monitor that listens
records what it says. Listeners are held by weak reference: a Monitor nobody holds any more
is not kept alive by being a listener.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

ClipListener = Callable[[Any, list], None]

_clip_listeners: list[weakref.ref] = []


def add_clip_listener(fn: ClipListener) -> weakref.ref:
    """Listen to gradient clipping: ``fn(result, params)`` after each clipping call.

    ``result`` is ``(total_norm, clip_coef)`` as 0-d tensors (no host sync); ``params`` the
    clipped tensors. A bound method is held weakly. Returns the handle for
    :func:`remove_clip_listener`.
    """
    ref = weakref.WeakMethod(fn) if hasattr(fn, "__self__") else weakref.ref(fn)
    _clip_listeners.append(ref)
    return ref


def remove_clip_listener(ref: weakref.ref) -> None:
    """Stop the listener registered under ``ref`` (no-op if it is gone)."""
    if ref in _clip_listeners:
        _clip_listeners.remove(ref)


def notify_clip(result: Any, params: list) -> None:
    """Called by :mod:`gradwatch.remedies.clipping` after it clipped ``params``."""
    for ref in list(_clip_listeners):
        fn = ref()
        if fn is None:
            remove_clip_listener(ref)
        else:
            fn(result, params)
