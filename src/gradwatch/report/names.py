"""Layer names for narrow places (terminal columns, figure ticks): shortened from the middle."""

from __future__ import annotations


def shorten(name: str, width: int = 24) -> str:
    """``name`` shortened from the middle to at most ``width`` characters.

    Both ends are kept (``encoder.layers.0…attn.q_proj``): the start says where the layer is,
    the end which one it is, so sibling layers (``layer1.0.conv1``, ``layer1.0.conv2``) stay
    distinguishable. The root module (empty name) is ``(root)``.
    """
    name = name or "(root)"
    if len(name) <= width:
        return name
    head = (width - 1) // 2
    tail = width - 1 - head
    return name[:head] + "…" + name[-tail:]
