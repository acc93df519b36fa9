"""Names for the terminal and narrow places: made printable, shortened from the middle."""

from __future__ import annotations

from typing import Any


def printable(text: Any) -> str:
    r"""``text`` as it may be written to a terminal: control characters made visible.

    A layer name, a run name or a message can hold any character (``nn.ModuleDict`` keys,
    a hand-edited meta.json); written as is, an escape sequence would clear the screen,
    recolour or hide what follows, or retitle the window. Every character that is not
    printable (escape, bell, carriage return, other C0 and C1 controls, ...) is written as its
    Python escape (``\x1b`` as four characters); newlines and tabs too, so a name stays on its line.
    """
    text = str(text)
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def printable_lines(text: Any) -> str:
    """Several lines (a model's repr), each made :func:`printable`; the newlines kept."""
    return "\n".join(printable(line) for line in str(text).split("\n"))


def shorten(name: str, width: int = 24) -> str:
    """``name`` shortened from the middle to at most ``width`` characters.

    Both ends are kept (``encoder.layers.0…attn.q_proj``): the start says where the layer is,
    the end which one it is, so sibling layers (``layer1.0.conv1``, ``layer1.0.conv2``) stay
    distinguishable. The root module (empty name) is ``(root)``. The name is made
    :func:`printable` first.
    """
    name = printable(name or "(root)")
    if len(name) <= width:
        return name
    head = (width - 1) // 2
    tail = width - 1 - head
    return name[:head] + "…" + name[-tail:]
