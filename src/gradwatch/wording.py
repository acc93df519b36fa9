"""Numbers in messages, written the way an engineer would write them.

``number(0.000153)`` → ``"1.5e-4"``, ``number(3.14159)`` → ``"3.1"``, ``times(20.3)`` →
``"20×"``, ``times(0.0004)`` → ``"1/2500"``: never ``"×8.9×10^0"``, ``"10^0-fold"`` or
``"shrinks by 0"``.
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
