"""Temporal gradient flow of recurrent layers: ‖∂L/∂x_t‖ over the time steps t."""

from __future__ import annotations

from typing import Any

import pandas as pd
from matplotlib.figure import Figure

from gradwatch.errors import GradwatchTypeError
from gradwatch.report._data import finite_positive
from gradwatch.report.figures._common import layer_colours, new_figure, note, short


def temporal(checkup_or_df: Any) -> Figure:
    """Temporal gradient flow: how much of the loss gradient reaches each input time step.

    How to read it: one line per recurrent layer (nn.RNN, nn.LSTM, nn.GRU); the x axis is the
    time step t of the layer's input sequence, the y axis (logarithmic) is ‖∂L/∂x_t‖ divided
    by its value at the last time step. When the loss is read at the end of the sequence, a
    line that falls by decades towards t = 0 means the early inputs get no gradient: the
    network cannot learn long-range dependencies (vanishing through time, Bengio et al. 1994;
    Pascanu et al. 2013). A line that rises towards t = 0 is exploding through time; clip the
    gradient norm. Gated layers (LSTM, GRU) usually keep the line flatter than a plain tanh RNN
    (Hochreiter & Schmidhuber 1997).

    Args:
        checkup_or_df: a Checkup (its ``.temporal``), or a DataFrame with columns ``layer``,
            ``t``, ``grad_norm`` (and optionally ``ratio``), or None.

    Returns:
        a matplotlib Figure with one panel; it says so when there is no recurrent layer.

    Raises:
        GradwatchTypeError: the argument is neither a Checkup, a DataFrame nor None.
    """
    df = getattr(checkup_or_df, "temporal", checkup_or_df)
    if df is not None and not isinstance(df, pd.DataFrame):
        raise GradwatchTypeError(
            f"checkup_or_df must be a Checkup (gw.check on a recurrent net) or its .temporal "
            f"DataFrame, got {type(checkup_or_df).__name__}"
        )
    fig, (ax,) = new_figure(1, 1, size=(8.0, 4.2))
    ax.set_title("temporal gradient flow ‖∂L/∂x_t‖ / ‖∂L/∂x_T‖", fontsize=10)
    if df is None or df.empty or not {"layer", "t", "grad_norm"} <= set(df.columns):
        note(ax, "no temporal gradient flow: the model has no nn.RNN / nn.LSTM / nn.GRU layer")
        return fig
    groups = list(df.groupby("layer", sort=False))
    for (layer, grp), colour in zip(groups, layer_colours(len(groups)), strict=True):
        grp = grp.sort_values("t")
        if "ratio" in grp.columns:
            y = grp["ratio"].to_numpy(dtype=float)
        else:
            g = grp["grad_norm"].to_numpy(dtype=float)
            y = g / g[-1] if g[-1] else g
        ax.plot(grp["t"].to_numpy(), finite_positive(y), lw=1.5, color=colour,
                label=short(str(layer)))
    ax.set_yscale("log")
    ax.axhline(1.0, ls=":", color="0.4", lw=1)
    ax.set_xlabel("input time step t (the loss is read at the end)")
    ax.set_ylabel("‖∂L/∂x_t‖ relative to the last t")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    return fig
