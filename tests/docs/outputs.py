"""Compare what a documentation block printed with the output shown under it.

Text must match line by line (trailing spaces aside); numbers may differ a little, as they do
from one machine or library version to the next ("give or take the last digit").
"""

from __future__ import annotations

import math
import re

NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")
#: Two numbers agree when within this relative difference, or this absolute one.
REL, ABS = 0.2, 0.015


def differences(printed: str, shown: str) -> list[str]:
    """Where ``printed`` and ``shown`` disagree (an empty list when they agree)."""
    got = [" ".join(ln.split()) for ln in printed.strip("\n").splitlines()]
    want = [" ".join(ln.split()) for ln in shown.strip("\n").splitlines()]
    if len(got) != len(want):
        return [f"{len(got)} lines printed, {len(want)} shown"]
    out = []
    for i, (g, w) in enumerate(zip(got, want, strict=True), 1):
        if NUMBER.sub("#", g) != NUMBER.sub("#", w):
            out.append(f"line {i}: printed {g!r}, shown {w!r}")
            continue
        for a, b in zip(NUMBER.findall(g), NUMBER.findall(w), strict=True):
            x, y = float(a), float(b)
            if not (math.isclose(x, y, rel_tol=REL, abs_tol=ABS) or (x == y)):
                out.append(f"line {i}: printed {a}, shown {b}")
    return out
