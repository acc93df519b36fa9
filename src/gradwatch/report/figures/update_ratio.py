"""Update ratio ‖Δw‖/‖w‖ by layer, against the 1e-3 rule of thumb."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from gradwatch.argcheck import check_int
from gradwatch.report._data import as_run, check_steps, finite_positive, pick_steps, wide
from gradwatch.report.figures._common import (
    layer_axis,
    layer_colours,
    new_figure,
    not_recorded,
    short,
    step_colours,
)

#: The rule of thumb: each step changes the weights by about a thousandth of their size.
GUIDE = 1e-3


def update_ratio(run: Any, steps: Sequence[int] | None = None, max_legend: int = 12) -> Figure:
    """Update ratio ‖Δw‖/‖w‖ per layer: by layer at a few steps (left) and over steps (right).

    How to read it: the update ratio is how much one optimizer step changes a layer's
    weights, relative to their size; both y axes are logarithmic and the dashed line marks
    1e-3, a common rule of thumb (Karpathy, CS231n). Far **below** it (1e-5 and less) a layer
    hardly learns: a vanishing gradient, or a learning rate too small for it. Far **above**
    it (1e-1 and more) each step rewrites the layer: a learning rate too large or an
    exploding gradient. Left: one line per chosen step, input side left; a line that drops
    towards the input side is the footprint of vanishing gradients on learning. Right: one
    line per layer over training (light = input side, dark = output side).

    Args:
        run: a Run, a run directory path, or a Checkup (a checkup has no optimizer step, so
            no update ratio).
        steps: steps for the left panel; default first, middle and last recorded.
        max_legend: the right panel lists the layers only when there are at most this many.

    Returns:
        a matplotlib Figure with two panels; both say "not recorded" when the run has no
        update ratio (it needs ``gw.watch(..., optimizer=opt)`` or ``mon.step()`` before
        ``opt.step()``).
    """
    run = as_run(run)
    steps = check_steps(steps)
    check_int("max_legend", max_legend, minimum=0)
    fig, (left, right) = new_figure(1, 2, size=(12.0, 4.2))
    left.set_title("update ratio by layer", fontsize=10)
    right.set_title("update ratio over training", fontsize=10)
    table = wide(run, "update_ratio")
    if table.empty:
        why = "pass optimizer= to gw.watch (a checkup takes no optimizer step)"
        not_recorded(left, "update_ratio", why)
        not_recorded(right, "update_ratio", why)
        return fig
    layers = list(table.columns)
    x = np.arange(len(layers))
    chosen = pick_steps(table.index.tolist(), steps)
    for step, colour in zip(chosen, step_colours(len(chosen)), strict=True):
        left.plot(x, finite_positive(table.loc[step].to_numpy(dtype=float)), marker="o", ms=3,
                  color=colour, label=f"step {step}")
    layer_axis(left, layers)
    left.set_xlabel("layer (input side → output side)")
    steps_all = table.index.to_numpy()
    for layer, colour in zip(layers, layer_colours(len(layers)), strict=True):
        right.plot(steps_all, finite_positive(table[layer].to_numpy(dtype=float)), lw=1.3,
                   color=colour, label=short(layer))
    right.set_xlabel("step")
    for ax in (left, right):
        ax.axhline(GUIDE, ls="--", color="0.3", lw=1, label="1e-3 guide")
        ax.set_yscale("log")
        ax.set_ylabel("‖Δw‖ / ‖w‖")
        ax.grid(True, which="major", axis="y", alpha=0.3)
    left.legend(fontsize=8, loc="best")
    if len(layers) <= max_legend:
        right.legend(fontsize=7, loc="best")
    fig.suptitle("Update ratio", fontsize=11)
    return fig
