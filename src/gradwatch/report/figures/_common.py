"""Shared plumbing of the figures: Agg figures outside pyplot, notes, layer axes, colours."""

from __future__ import annotations

import contextlib
import contextvars
import textwrap
from collections.abc import Iterator, Sequence

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from gradwatch.report.names import shorten

#: Colour of non-finite markers and guide lines that mean "look here".
ALARM = "#d62728"


#: Width in inches of a figure drawn for a phone screen: about 300 pt, so that a 420 px wide
#: page shows it at about 1.3x and 8 pt tick labels stay about 10 px high.
NARROW_WIDTH = 4.3
_NARROW: contextvars.ContextVar[bool] = contextvars.ContextVar("gradwatch_narrow", default=False)


@contextlib.contextmanager
def narrow_layout() -> Iterator[None]:
    """Figures made inside this block are laid out for a narrow (phone) screen.

    Panels side by side are stacked one above the other and the figure is
    :data:`NARROW_WIDTH` inches wide, with the fonts at their usual size: the figure is
    re-laid out, not shrunk, so its labels stay readable.
    """
    token = _NARROW.set(True)
    try:
        yield
    finally:
        _NARROW.reset(token)


def new_figure(nrows: int = 1, ncols: int = 1, size: tuple[float, float] = (8.0, 4.5)) -> tuple[
    Figure, list[Axes]
]:
    """A figure on the Agg canvas, never registered with pyplot, and its axes (flat list).

    Figures made this way hold no global state: they are freed when the last reference goes.
    Inside :func:`narrow_layout` the panels are stacked in one column, :data:`NARROW_WIDTH`
    inches wide (the flat list of axes keeps its order).
    """
    if _NARROW.get():
        panels = nrows * ncols
        panel_h = min(3.6, max(2.8, size[1] / nrows * 0.8))
        nrows, ncols = panels, 1
        size = (NARROW_WIDTH, panel_h * panels + 0.4)
    fig = Figure(figsize=size, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, list(np.asarray(axes).ravel())


#: Longest line of a note in an empty panel, in characters: a phone's panel is narrow.
NOTE_WIDTH, NARROW_NOTE_WIDTH = 80, 40


def note(ax: Axes, text: str) -> None:
    """Write ``text`` in the middle of an empty panel (e.g. "not recorded") and hide its ticks.

    Lines are wrapped between words to fit the panel (narrower in :func:`narrow_layout`), so
    the note stays inside the panel's frame.
    """
    width = NARROW_NOTE_WIDTH if _NARROW.get() else NOTE_WIDTH
    text = "\n".join(textwrap.fill(line, width) for line in text.splitlines())
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="0.35")
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
    """A layer name shortened from the middle to ``width`` characters (see :func:`shorten`)."""
    return shorten(name, width)


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
