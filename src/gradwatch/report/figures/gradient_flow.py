"""Gradient flow by layer: how the gradient's size changes from the output back to the input."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from gradwatch.argcheck import check_names
from gradwatch.report._data import (
    as_run,
    check_stat,
    check_steps,
    finite_positive,
    nonfinite_layers,
    pick_steps,
    wide,
)
from gradwatch.report.figures._common import (
    ALARM,
    layer_axis,
    new_figure,
    not_recorded,
    step_colours,
)

TITLES = {
    "backprop_norm": "back-propagated signal ‖∂L/∂output‖",
    "grad_norm": "weight gradient ‖∂L/∂W‖",
}


def gradient_flow(
    run: Any,
    steps: Sequence[int] | None = None,
    stat: str | Sequence[str] = "backprop_norm",
) -> Figure:
    """Gradient flow: a statistic per layer, input side on the left, at a few steps.

    How to read it: the x axis lists the layers in the order the signal passes through them
    (input side left, output side right); the y axis is logarithmic, so equal heights mean
    equal ratios. One line per chosen step (light = early, dark = late). In a healthy network
    the line is roughly flat: every layer gets a gradient of similar size. A line that falls
    towards the left, by several decades, is a **vanishing** gradient (the input-side layers
    barely learn: Glorot & Bengio 2010); one that rises towards the left is an **exploding**
    gradient. ``backprop_norm`` (‖∂L/∂output‖ of each layer) is the signal itself and shows
    vanishing most directly; ``grad_norm`` (‖∂L/∂W‖) is what the optimizer sees, and can look
    flat while the signal vanishes. Red crosses on the top edge mark non-finite values
    (NaN/Inf); zeros cannot be drawn on a log axis and leave gaps.

    Args:
        run: a Run, a run directory path, or a Checkup.
        steps: steps to draw (each replaced by the nearest recorded step); default the
            first, middle and last recorded steps. Every panel draws the same steps (those
            all the statistics were recorded at, when there are any), and the title names
            them.
        stat: a statistic name, or several (one panel each), e.g.
            ``("backprop_norm", "grad_norm")``.

    Returns:
        a matplotlib Figure (Agg canvas, not registered with pyplot), one panel per statistic.
    """
    run = as_run(run)
    steps = check_steps(steps)
    stats = [stat] if isinstance(stat, str) else check_names("stat", stat)
    for name in stats:
        check_stat("stat", name)
    fig, axes = new_figure(1, len(stats), size=(5.5 * len(stats) + 1.5, 4.5))
    tables = {name: wide(run, name) for name in stats}
    # the same steps in every panel, so one legend's steps are every panel's: the steps all
    # the statistics were recorded at (a detail statistic is recorded every few steps only)
    recorded = [set(t.index.tolist()) for t in tables.values() if not t.empty]
    common = sorted(set.intersection(*recorded)) if recorded else []
    drawn: list[int] = []
    for ax, name in zip(axes, stats, strict=True):
        table = tables[name]
        ax.set_title(TITLES.get(name, name), fontsize=10)
        if table.empty:
            not_recorded(ax, name)
            continue
        layers = list(table.columns)
        chosen = pick_steps(common or table.index.tolist(), steps)
        drawn += [s for s in chosen if s not in drawn]
        x = np.arange(len(layers))
        bad_any = False
        for step, colour in zip(chosen, step_colours(len(chosen)), strict=True):
            raw = table.loc[step].to_numpy(dtype=float)
            ax.plot(x, finite_positive(raw), marker="o", ms=3, lw=1.5, color=colour,
                    label=f"step {step}")
            bad = np.isin(layers, nonfinite_layers(run, name, step))
            bad_any |= bool(bad.any())
            if bad.any():
                ax.plot(x[bad], np.ones(int(bad.sum())), "x", color=ALARM, ms=8, mew=2,
                        transform=ax.get_xaxis_transform(), clip_on=False)
        ax.set_yscale("log")
        ax.set_ylabel(name)
        ax.set_xlabel("layer (input side → output side)")
        layer_axis(ax, layers)
        ax.grid(True, which="major", axis="y", alpha=0.3)
        ax.legend(fontsize=8, loc="best")
        if bad_any:
            ax.text(0.01, 0.99, "× non-finite", color=ALARM, transform=ax.transAxes, va="top",
                    fontsize=8)
    fig.suptitle("Gradient flow by layer" + (f" at {step_list(sorted(drawn))}" if drawn else ""),
                 fontsize=11)
    return fig


def step_list(steps: Sequence[int]) -> str:
    """``"step 5"``, ``"steps 0 and 9"``, ``"steps 0, 190 and 390"``."""
    if len(steps) == 1:
        return f"step {steps[0]}"
    return "steps " + ", ".join(str(s) for s in steps[:-1]) + f" and {steps[-1]}"
