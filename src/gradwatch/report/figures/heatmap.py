"""Layer × step heatmap of one statistic: where and when the gradient is small or large."""

from __future__ import annotations

from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from gradwatch.report._data import as_run, check_stat, wide
from gradwatch.report.figures._common import ALARM, layer_axis, new_figure, not_recorded


def _edges(values: np.ndarray) -> np.ndarray:
    """Cell edges around sorted centres (midpoints; half a gap beyond the ends)."""
    v = np.asarray(values, dtype=float)
    if len(v) == 1:
        return np.array([v[0] - 0.5, v[0] + 0.5])
    mid = (v[:-1] + v[1:]) / 2
    return np.concatenate([[v[0] - (mid[0] - v[0])], mid, [v[-1] + (v[-1] - mid[-1])]])


def heatmap(run: Any, stat: str = "backprop_norm") -> Figure:
    """Heatmap of a statistic over layers (rows) and recorded steps (columns), log colours.

    How to read it: each row is a layer, **input side at the bottom, output side at the
    top**; each column is a recorded step (uneven schedules keep their spacing). The colour
    is logarithmic (one colour-bar tick per decade): dark is a small value, bright a large
    one. A healthy run shows roughly uniform colour up a column. Dark bottom rows mean the
    gradient **vanishes** on its way back to the input (for ``backprop_norm``, the signal
    ‖∂L/∂output‖; for ``grad_norm``, ‖∂L/∂W‖); bright bottom rows mean it **explodes**. A
    colour change along a row is a change in time: vanishing that sets in during training
    (saturating units, dying ReLUs) or a blow-up at a given step. Red cells are non-finite
    (NaN/Inf); grey cells are zero (no gradient at all) or not recorded.

    Args:
        run: a Run, a run directory path, or a Checkup.
        stat: the statistic to show, usually ``"backprop_norm"`` or ``"grad_norm"``.

    Returns:
        a matplotlib Figure with the heatmap panel and its colour bar.
    """
    run = as_run(run)
    check_stat("stat", stat)
    table = wide(run, stat)
    fig, (ax,) = new_figure(1, 1, size=(8.5, 4.8))
    ax.set_title(f"{stat} by layer and step (log colour)", fontsize=10)
    if table.empty:
        not_recorded(ax, stat)
        return fig
    layers = list(table.columns)
    steps = table.index.to_numpy(dtype=float)
    data = table.to_numpy(dtype=float).T  # (layers, steps): row 0 = input side, drawn at bottom
    good = np.isfinite(data) & (data > 0)
    nonfinite = np.isinf(data) | _recorded_nan(run, stat, table)

    cmap = colormaps["magma"].with_extremes(bad="0.8")
    if good.any():
        lo, hi = float(data[good].min()), float(data[good].max())
        if hi <= lo:
            lo, hi = lo / 10, hi * 10
        norm = LogNorm(vmin=lo, vmax=hi)
        shown = np.where(good, data, np.nan)
        mesh = ax.pcolormesh(_edges(steps), np.arange(len(layers) + 1) - 0.5,
                             np.ma.masked_invalid(shown), cmap=cmap, norm=norm, shading="flat",
                             rasterized=True)
        fig.colorbar(mesh, ax=ax, label=f"{stat} (log scale)")
    else:
        ax.set_xlim(*_edges(steps)[[0, -1]])
        ax.set_ylim(-0.5, len(layers) - 0.5)
        ax.text(0.5, 0.5, f"no positive finite {stat} value", ha="center", va="center",
                transform=ax.transAxes, color="0.35")
    if nonfinite.any():
        yy, xx = np.nonzero(nonfinite)
        ax.scatter(steps[xx], yy, marker="s", s=30, color=ALARM, label="non-finite")
        ax.legend(handles=[Patch(color=ALARM, label="non-finite (NaN/Inf)")], fontsize=8,
                  loc="upper right")
    ax.set_xlabel("step")
    ax.set_ylabel("layer (input side at the bottom)")
    layer_axis(ax, layers, axis="y")
    ax.set_ylim(-0.5, len(layers) - 0.5)
    return fig


def _recorded_nan(run: Any, stat: str, table: Any) -> np.ndarray:
    """(layers, steps) mask of values recorded as NaN (rather than not recorded)."""
    s = run.stats
    rows = s[(s["stat"] == stat) & (s["layer"] != "") & s["value"].isna()]
    mask = np.zeros((len(table.columns), len(table.index)), dtype=bool)
    if rows.empty:
        return mask
    li = {ly: i for i, ly in enumerate(table.columns)}
    si = {st: j for j, st in enumerate(table.index)}
    for layer, step in zip(rows["layer"], rows["step"], strict=True):
        if layer in li and step in si:
            mask[li[layer], si[step]] = True
    return mask
