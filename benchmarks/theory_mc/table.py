"""The Monte Carlo results as the Markdown table of ``docs/explain/theory.md``.

One row per configuration: the predicted and measured log10 ‖δ_first‖²/‖δ_last‖² (the
input-side layer against the output-side one), the measured range over all layers, the
largest gap between prediction and measurement in decades and over its tolerance, and how
many layers pass. A configuration the theory declares outside itself shows its verdict.
"""

from __future__ import annotations

import math
from typing import Any

HEADER = (
    "| configuration | model | predicted log10 ‖δ_first‖²/‖δ_last‖² | measured (± sd) "
    "| measured range, all layers | largest gap (decades) | worst / tolerance | layers within "
    "| agreement |\n|---|---|---:|---:|---:|---:|---:|---:|---|"
)


def _num(x: Any, fmt: str = "+.2f") -> str:
    x = float(x)
    return format(x, fmt) if math.isfinite(x) else "–"


def row(result: dict[str, Any]) -> str:
    """One configuration's line."""
    layers = [
        r
        for r in result["layers"]
        if math.isfinite(float(r["predicted"])) and math.isfinite(float(r["measured"]))
    ]
    first = layers[0] if layers else None
    gap = max((abs(float(r["predicted"]) - float(r["measured"])) for r in layers), default=math.nan)
    ok = sum(bool(r["ok"]) for r in result["layers"])
    lo, hi = (result["measured_span"] or [math.nan, math.nan])[:2]
    if result["expect"] == "uncertain":
        agreement = f"outside the theory: predict says {result['verdict']}"
        if result["passed"]:
            agreement += " (as declared)"
    else:
        agreement = "yes" if result["passed"] else "**no**"
    cells = [
        f"`{result['name']}`",
        result["description"],
        _num(first["predicted"]) if first else "–",
        f"{_num(first['measured'])} ± {_num(first['sd'], '.2f')}" if first else "–",
        f"{_num(lo)} … {_num(hi)}",
        _num(gap, ".2f"),
        _num(result["worst_over_tolerance"], ".2f"),
        f"{ok}/{result['n_layers']}",
        agreement,
    ]
    return "| " + " | ".join(cells) + " |"


def markdown(results: list[dict[str, Any]]) -> str:
    """The whole table (header and one line per configuration)."""
    return "\n".join([HEADER, *(row(r) for r in results)])
