"""The loss curve, with the steps where it was not finite marked."""

from __future__ import annotations

from typing import Any

import numpy as np
from matplotlib.figure import Figure

from gradwatch.report._data import as_run
from gradwatch.report.figures._common import ALARM, new_figure, not_recorded


def loss(run: Any) -> Figure:
    """The training loss per recorded step.

    How to read it: the loss should fall, quickly at first. A loss that stays flat from the
    start often means the gradient does not reach most layers (vanishing); one that jumps up
    or turns into NaN means it exploded (Pascanu et al. 2013). Red vertical lines mark steps
    whose loss was NaN or Inf. The y axis turns logarithmic when the (positive) loss spans
    more than two decades, so that late progress stays visible.

    Args:
        run: a Run, a run directory path, or a Checkup.

    Returns:
        a matplotlib Figure with one panel; it says "not recorded" when no loss was passed
        (``mon.step(loss=loss)``).
    """
    run = as_run(run)
    fig, (ax,) = new_figure(1, 1, size=(8.0, 3.8))
    ax.set_title("loss", fontsize=10)
    series = run.loss()
    if series.empty:
        not_recorded(ax, "loss", "pass it with mon.step(loss=loss)")
        return fig
    steps = series.index.to_numpy()
    values = series.to_numpy(dtype=float)
    finite = np.isfinite(values)
    ax.plot(steps, np.where(finite, values, np.nan), marker="." if len(steps) < 50 else None,
            lw=1.5, color="#1f77b4", label="loss")
    for s in steps[~finite]:
        ax.axvline(s, color=ALARM, lw=1, alpha=0.7)
    if (~finite).any():
        ax.text(0.01, 0.98, f"{int((~finite).sum())} non-finite step(s)", color=ALARM,
                transform=ax.transAxes, va="top", fontsize=8)
    pos = values[finite & (values > 0)]
    if len(pos) == finite.sum() and len(pos) > 1 and pos.max() / pos.min() > 100:
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(True, alpha=0.3)
    return fig
