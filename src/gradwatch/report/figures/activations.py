"""Activation saturation and dead units over training, one line per layer."""

from __future__ import annotations

from typing import Any

import numpy as np
from matplotlib.figure import Figure

from gradwatch.argcheck import check_int
from gradwatch.report._data import as_run, wide
from gradwatch.report.figures._common import layer_colours, new_figure, not_recorded, short

#: Below this largest saturated fraction, the panel says why it reads near 0%.
LOW_SATURATION = 0.05
LOW_SATURATION_NOTE = (
    "near 0%: the units sit near the middle of the curve\n"
    "(sigmoid ≈ 0.5), not in the tails (< 0.03 or > 0.97).\n"
    "The gradient can vanish all the same: σ′ ≤ 1/4,\n"
    "and every layer multiplies it (Glorot & Bengio 2010)."
)

PANELS = (
    ("saturated_frac", "saturated fraction (sigmoid/tanh units in their flat tails)",
     "no sigmoid/tanh-like activation in the model, or activations=False"),
    ("dead_frac", "dead fraction (ReLU-like units zero for the whole batch)",
     "no ReLU-like activation in the model, or activations=False"),
)


def activations(run: Any, max_legend: int = 12) -> Figure:
    """Activation saturation (left) and dead units (right) over the recorded steps.

    How to read it: each line is the activation that follows one layer (light = input side,
    dark = output side); the y axis is the fraction of units, 0 to 1. **Saturated** units
    (sigmoid/tanh outputs in their flat tails) pass almost no gradient back: a fraction that
    climbs towards 1, typically in the deepest or the first layers, is the mechanism behind
    vanishing gradients in sigmoid networks (Glorot & Bengio 2010 saw the top layer saturate
    early). **Dead** ReLU units are zero for every example of the batch, so their weights get
    no gradient at all; a dead fraction that grows during training (often after a too large
    learning rate) means capacity is being lost for good. A saturated fraction near 0% in a
    sigmoid net whose gradient vanishes is no contradiction, and the panel says so: a standard
    initialisation keeps the pre-activations small, so the units sit near 0.5, where the
    sigmoid's derivative is 1/4 at most; each layer still multiplies the gradient by that
    factor, and a deep stack loses it geometrically without saturating. Statistics of this
    kind are taken every ``detail_every``-th recorded step, so the lines have fewer points
    than the loss.

    Args:
        run: a Run, a run directory path, or a Checkup.
        max_legend: the legend lists the layers only when there are at most this many.

    Returns:
        a matplotlib Figure with two panels (saturated fraction, dead fraction); a panel whose
        statistic the run does not hold says so.
    """
    run = as_run(run)
    check_int("max_legend", max_legend, minimum=0)
    fig, axes = new_figure(1, 2, size=(12.0, 4.2))
    for ax, (stat, title, why) in zip(axes, PANELS, strict=True):
        ax.set_title(title, fontsize=10)
        table = wide(run, stat)
        if table.empty:
            not_recorded(ax, stat, why)
            continue
        steps = table.index.to_numpy()
        for layer, colour in zip(table.columns, layer_colours(table.shape[1]), strict=True):
            y = table[layer].to_numpy(dtype=float)
            ax.plot(steps, y, marker="." if len(steps) < 30 else None, lw=1.4, color=colour,
                    label=short(layer))
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel("step")
        ax.set_ylabel(stat)
        ax.grid(True, alpha=0.3)
        if table.shape[1] <= max_legend:
            ax.legend(fontsize=7, title="after layer", title_fontsize=7, loc="best")
        top = np.nanmax(table.to_numpy(dtype=float)) if table.notna().any().any() else np.nan
        if stat == "saturated_frac" and np.isfinite(top) and top < LOW_SATURATION:
            ax.text(0.02, 0.55, LOW_SATURATION_NOTE, transform=ax.transAxes, fontsize=8,
                    va="center", color="0.2",
                    bbox={"boxstyle": "round", "fc": "#fff8e1", "ec": "#d4a72c"})
        last = table.iloc[-1].to_numpy(dtype=float)
        if np.isfinite(last).any():
            ax.text(0.99, 0.02, f"last step: max {np.nanmax(last):.0%}", ha="right",
                    transform=ax.transAxes, fontsize=8, color="0.3")
    fig.suptitle("Activations over training", fontsize=11)
    return fig
