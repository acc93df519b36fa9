"""Before / after ``gw.fix``: the back-propagated signal per layer in both models."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from gradwatch.errors import GradwatchTypeError
from gradwatch.report._data import finite_positive
from gradwatch.report.figures._common import layer_axis, new_figure, note


def fix_comparison(report: Any, stat: str = "backprop_norm") -> Figure:
    """``backprop_norm`` per layer before and after :func:`gradwatch.fix`, log scale.

    How to read it: both lines come from one-batch checkups (``report.before.table`` and
    ``report.after.table``), input side left. The before line (grey) shows the problem: a
    fall of several decades towards the input is vanishing, a rise is exploding. The after
    line (colour) should be roughly flat. When the fix changed the architecture (inserted
    normalization layers, residual blocks) the two models have different layers: each line
    is then drawn over its own layers, spread over the same width (relative depth), and the
    x labels are the fixed model's.

    Args:
        report: the ``FixReport`` returned by ``gw.fix`` (anything with ``.before`` and
            ``.after`` Checkups).
        stat: the table column to compare (``"backprop_norm"`` or ``"grad_norm"``).

    Returns:
        a matplotlib Figure with one panel.

    Raises:
        GradwatchTypeError: ``report`` has no ``before``/``after`` checkups.
    """
    before = getattr(getattr(report, "before", None), "table", None)
    after = getattr(getattr(report, "after", None), "table", None)
    if not isinstance(before, pd.DataFrame) or not isinstance(after, pd.DataFrame):
        raise GradwatchTypeError(
            f"report must be the FixReport returned by gw.fix (with .before and .after "
            f"checkups), got {type(report).__name__}"
        )
    fig, (ax,) = new_figure(1, 1, size=(8.5, 4.5))
    vb = getattr(report.before, "verdict", "?")
    va = getattr(report.after, "verdict", "?")
    ax.set_title(f"{stat} per layer: before fix ({vb}) → after fix ({va})", fontsize=10)
    if stat not in before.columns or stat not in after.columns:
        note(ax, f"{stat}: not in the checkup tables")
        return fig
    names_b = [str(s) for s in before["layer"]]
    names_a = [str(s) for s in after["layer"]]
    same = names_b == names_a
    n = max(len(names_a), 1)
    xa = np.arange(len(names_a), dtype=float)
    xb = np.arange(len(names_b), dtype=float) if same else _spread(len(names_b), n)
    ax.plot(xb, finite_positive(before[stat].to_numpy(dtype=float)), marker="o", ms=3,
            color="0.55", ls="--", label=f"before ({vb})")
    ax.plot(xa, finite_positive(after[stat].to_numpy(dtype=float)), marker="o", ms=3,
            color="#2ca02c" if va == "healthy" else "#ff7f0e", label=f"after ({va})")
    ax.set_yscale("log")
    ax.set_ylabel(stat)
    ax.set_xlabel("layer of the fixed model (input side → output side)"
                  + ("" if same else "; before drawn at relative depth"))
    layer_axis(ax, names_a)
    ax.grid(True, which="major", axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    return fig


def _spread(k: int, n: int) -> np.ndarray:
    """Positions of ``k`` layers spread over the span of ``n`` (same first and last x)."""
    if k == 1:
        return np.array([0.0])
    return np.linspace(0.0, n - 1.0, k)
