"""Shared plumbing of the figures: Agg figures outside pyplot, notes, layer axes, colours."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

#: Colour of non-finite markers and guide lines that mean "look here".
ALARM = "#d62728"


def new_figure(nrows: int = 1, ncols: int = 1, size: tuple[float, float] = (8.0, 4.5)) -> tuple[
    Figure, list[Axes]
]:
    """A figure on the Agg canvas, never registered with pyplot, and its axes (flat list).

    Figures made this way hold no global state: they are freed when the last reference goes.
    """
    fig = Figure(figsize=size, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, list(np.asarray(axes).ravel())


def note(ax: Axes, text: str) -> None:
    """Write ``text`` in the middle of an empty panel (e.g. "not recorded") and hide its ticks."""
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="0.35",
            wrap=True)
    ax.set_xticks([])
    ax.set_yticks([])


def not_recorded(ax: Axes, stat: str, why: str = "") -> None:
    """Mark a panel whose statistic the run does not hold."""
    msg = f"{stat}: not recorded in this run"
    note(ax, msg + (f"\n{why}" if why else ""))


def layer_axis(ax: Axes, layers: Sequence[str], max_labels: int = 40, axis: str = "x") -> None:
    """Label a categorical layer axis (positions 0..n-1), thinning the labels of deep nets."""
    n = len(layers)
    every = max(1, int(np.ceil(n / max_labels)))
    ticks = list(range(0, n, every))
    labels = [short(layers[i]) for i in ticks]
    if axis == "x":
        ax.set_xticks(ticks, labels, rotation=60 if n > 6 else 0, ha="right" if n > 6 else "center",
                      fontsize=8)
        ax.set_xlim(-0.5, n - 0.5)
    else:
        ax.set_yticks(ticks, labels, fontsize=8)


def short(name: str, width: int = 24) -> str:
    """A layer name cut to ``width`` characters (keeping its end, where names differ)."""
    name = name or "(root)"
    return name if len(name) <= width else "…" + name[-(width - 1):]


def step_colours(n: int) -> list[tuple[float, float, float, float]]:
    """``n`` colours from early (light) to late (dark) for lines that stand for steps."""
    from matplotlib import colormaps

    cmap = colormaps["viridis"]
    return [cmap(0.85 - 0.75 * i / max(1, n - 1)) for i in range(n)]


def layer_colours(n: int) -> list[tuple[float, float, float, float]]:
    """``n`` colours from the input side to the output side, for lines that stand for layers."""
    from matplotlib import colormaps

    cmap = colormaps["plasma"]
    return [cmap(0.9 * i / max(1, n - 1)) for i in range(n)]
