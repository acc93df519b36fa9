"""Numbers and names in messages and tables, written the way an engineer would write them.

``number(0.000153)`` → ``"1.5e-4"``, ``number(3.14159)`` → ``"3.1"``, ``times(20.3)`` →
``"20×"``, ``times(0.0004)`` → ``"1/2500"``: never ``"×8.9×10^0"``, ``"10^0-fold"`` or
``"shrinks by 0"``. Layer names and paths in narrow places are folded after a ``.`` or ``/``
(:func:`fold`), never cut inside a word.
"""

from __future__ import annotations

import math


def number(x: float, digits: int = 2) -> str:
    """A number with ``digits`` significant digits, scientific only when it must be.

    Args:
        x: any float (NaN and infinities are written "NaN", "Inf", "-Inf").
        digits: significant digits (>= 1).

    Returns:
        ``"0"``, ``"0.012"``, ``"3.1"``, ``"250"``, ``"1.2e+06"`` style, without a trailing
        ``.0``; values below 1e-3 or from 1e5 on use ``e`` notation with a short exponent
        (``"1.5e-7"``).
    """
    x = float(x)
    if math.isnan(x):
        return "NaN"
    if math.isinf(x):
        return "Inf" if x > 0 else "-Inf"
    if x == 0:
        return "0"
    a = abs(x)
    if 1e-3 <= a < 1e5:
        e = math.floor(math.log10(a))
        decimals = max(digits - 1 - e, 0)
        s = f"{x:.{decimals}f}"
        if "." in s:
            s = s.rstrip("0").rstrip(".")
        return s
    mant, exp = f"{x:.{max(digits - 1, 0)}e}".split("e")
    if "." in mant:
        mant = mant.rstrip("0").rstrip(".")
    return f"{mant}e{int(exp)}"


def times(ratio: float) -> str:
    """A multiplicative change: ``"20×"`` for growth, ``"1/2500"`` (of its value) for decay.

    Args:
        ratio: new over old (> 0). 0 is written ``"0 (underflow)"``.

    Returns:
        a short string; for ratios below 1 the reciprocal is written (``"1/250"``) because
        "shrinks to 1/250 of" reads better than "shrinks by ×0.004".
    """
    ratio = float(ratio)
    if math.isnan(ratio):
        return "NaN"
    if ratio == 0:
        return "0 (underflow)"
    if math.isinf(ratio):
        return "Inf"
    if ratio >= 1:
        return f"{number(ratio)}×"
    return f"1/{number(1 / ratio)}"


def per_layer(factor: float) -> str:
    """A per-layer factor: ``"0.71 per layer"``, ``"1.1 per layer"`` (2 significant digits)."""
    return f"{number(factor)} per layer"


def fold(name: str, width: int, separators: str = "./") -> str:
    """``name`` broken into lines of at most ``width`` characters after a separator.

    ``layer1.0.conv1`` at width 9 is ``layer1.0.`` then ``conv1``: a line breaks only after a
    ``.`` (module paths) or a ``/`` (file paths), never inside a word, so every part of the
    name stays readable and siblings stay distinguishable. A part longer than ``width`` on
    its own is shortened from the middle, both ends kept (as
    :func:`gradwatch.report.names.shorten` does). The root module (empty name) is ``(root)``.

    Args:
        name: a layer name or a path.
        width: the longest line (at least 3).
        separators: characters after which a line may break.
    """
    name = name or "(root)"
    width = max(3, int(width))
    if len(name) <= width:
        return name
    parts, current = [], ""
    for ch in name:  # split after each separator, keeping it at the end of its part
        current += ch
        if ch in separators:
            parts.append(current)
            current = ""
    if current:
        parts.append(current)
    lines, line = [], ""
    for part in parts:
        if len(part) > width:
            if line:
                lines.append(line)
            head = (width - 1) // 2
            lines.append(part[:head] + "…" + part[len(part) - (width - 1 - head):])
            line = ""
        elif len(line) + len(part) > width:
            lines.append(line)
            line = part
        else:
            line += part
    if line:
        lines.append(line)
    return "\n".join(lines)


def name_room(console_width: int, others: list[int], boxed: bool, least: int = 10) -> int:
    """How many characters a table's first (name) column can take in ``console_width``.

    Args:
        console_width: the terminal's width.
        others: the widths of the other columns' contents.
        boxed: a table with borders and a space each side of a cell (rich's default box);
            else no box and one space between columns.
        least: the room given however narrow the terminal.
    """
    if boxed:
        used = sum(others) + 3 * (len(others) + 1) + 1
    else:
        used = sum(others) + len(others)
    return max(least, console_width - used)
