"""Low precision: each layer's gradient range against the formats' limits, and what flushes.

Drawn from the statistics of :mod:`gradwatch.stats.precision` (recorded with
``watch(precision=...)``); a run without them gets "not recorded" panels.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from gradwatch.report._data import as_run
from gradwatch.report.figures._common import ALARM, layer_colours, new_figure, not_recorded, short
from gradwatch.stats.precision import FORMATS

#: Drawn in every headroom panel; the watched format's limits are drawn darker.
FORMAT_COLOURS = {"fp16": "#1f77b4", "bf16": "#2ca02c", "e4m3": "#d62728", "e5m2": "#9467bd"}


def _format(run: Any) -> str:
    fmt = (run.meta.get("settings") or {}).get("precision")
    return fmt if fmt in FORMATS else "fp16"


def _limits(fmt: str) -> tuple[float, float]:
    """log2 of the smallest subnormal and of the largest finite value."""
    spec = FORMATS[fmt]
    return math.log2(spec["min_sub"]), math.log2(spec["max"])


def headroom(run: Any, max_layers: int = 40) -> Figure:
    """Each layer's gradient range, log2 |g| from its smallest nonzero to its largest entry.

    How to read it: left, one bar per layer (input side at the top) at the last recorded
    step, against the limits of the four formats (dashed: smallest subnormal, below which a
    cast flushes to zero; solid: largest finite value, above which it overflows); the format
    the run was watched for is drawn darker. A bar that crosses a dashed line loses its small
    entries in that format, one that crosses a solid line overflows. Right, the same range
    over training for the input-side, middle and output-side layers: gradients that shrink as
    the loss falls drift toward the dashed line. Values are at the loss scale the cast sees
    (unit_scaling's ``track_scales`` draws one batch this way; this is every recorded step).

    Args:
        run: a Run, a run directory path, or a Checkup.
        max_layers: most layers drawn as bars (spread over the depth).

    Returns:
        a matplotlib Figure with two panels.
    """
    run = as_run(run)
    fig, (left, right) = new_figure(1, 2, size=(9.0, 4.2))
    hi, lo = run.pivot("grad_log2_max"), run.pivot("grad_log2_min")
    if hi.empty:
        for ax in (left, right):
            not_recorded(ax, "grad_log2_max", "watch(..., precision='fp16') records it")
        return fig
    fmt = _format(run)
    layers = [c for c in hi.columns if c != ""]
    if len(layers) > max_layers:
        layers = [layers[i] for i in np.linspace(0, len(layers) - 1, max_layers).astype(int)]
    step = hi.index[-1]
    y = np.arange(len(layers))[::-1]
    top = hi.loc[step, layers].to_numpy(dtype=float)
    bottom = lo.reindex(index=[step], columns=layers).iloc[0].to_numpy(dtype=float)
    left.barh(y, top - bottom, left=bottom, color=layer_colours(len(layers)), height=0.7)
    for name, colour in FORMAT_COLOURS.items():
        sub, big = _limits(name)
        alpha = 0.9 if name == fmt else 0.25
        left.axvline(sub, color=colour, ls="--", lw=1, alpha=alpha)
        left.axvline(big, color=colour, lw=1, alpha=alpha, label=name)
    left.set_yticks(y, [short(s, 16) for s in layers], fontsize=7)
    left.set_xlim(-140, 135)
    left.set_xlabel("log2 |gradient|")
    left.set_title(f"range per layer at step {step} (watched: {fmt})", fontsize=10)
    left.legend(fontsize=7, loc="lower right")
    picks = list(dict.fromkeys([layers[0], layers[len(layers) // 2], layers[-1]]))
    colours = layer_colours(len(picks))
    for colour, layer in zip(colours, picks, strict=True):
        a = lo[layer].to_numpy(dtype=float) if layer in lo else np.full(len(hi), np.nan)
        right.fill_between(hi.index, a, hi[layer].to_numpy(dtype=float), color=colour,
                           alpha=0.35, label=short(layer, 16))
    sub, big = _limits(fmt)
    right.axhline(sub, color=ALARM, ls="--", lw=1, label=f"{fmt} smallest subnormal")
    right.axhline(big, color=ALARM, lw=1, label=f"{fmt} largest")
    right.set_xlabel("step")
    right.set_ylabel("log2 |gradient|")
    right.set_title("range over training", fontsize=10)
    right.legend(fontsize=7)
    right.grid(True, alpha=0.3)
    return fig


def underflow(run: Any, max_legend: int = 12) -> Figure:
    """The fraction of each layer's entries that flush to zero in the watched format.

    How to read it: one line per layer (the larger of the parameter-gradient and the
    back-propagated fractions, ``grad_underflow_<fmt>`` and ``bp_underflow_<fmt>``) over the
    recorded steps. The dotted line is the ``underflow`` rule's threshold (a tenth of the
    entries). Lines that rise as the loss falls mean the loss scale no longer fits the
    gradients; lines high from the first step, on the input side, mean the gradient vanishes
    there anyway (fix the network) or the loss scale is far too low.

    Args:
        run: a Run, a run directory path, or a Checkup.
        max_legend: most layers named in the legend.

    Returns:
        a matplotlib Figure with one panel.
    """
    from gradwatch.diagnose.precision import UNDERFLOW_FRACTION

    run = as_run(run)
    fmt = _format(run)
    fig, (ax,) = new_figure(1, 1, size=(8.0, 3.8))
    grad, bp = run.pivot(f"grad_underflow_{fmt}"), run.pivot(f"bp_underflow_{fmt}")
    if grad.empty and bp.empty:
        not_recorded(ax, f"grad_underflow_{fmt}", "watch(..., precision='fp16') records it")
        return fig
    both = grad.combine(bp, np.fmax) if not (grad.empty or bp.empty) else (
        bp if grad.empty else grad)
    layers = [c for c in both.columns if c != ""]
    for i, (colour, layer) in enumerate(zip(layer_colours(len(layers)), layers, strict=True)):
        ax.plot(both.index, both[layer].to_numpy(dtype=float), color=colour, lw=1.2,
                marker="." if len(both) < 30 else None,
                label=short(layer, 16) if i < max_legend else None)
    ax.axhline(UNDERFLOW_FRACTION, color=ALARM, ls=":", lw=1, label="underflow rule")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("step")
    ax.set_ylabel(f"fraction flushed in {fmt}")
    ax.set_title(f"entries that flush to zero in {fmt}, per layer", fontsize=10)
    ax.legend(fontsize=7, ncol=2)
    ax.grid(True, alpha=0.3)
    return fig
