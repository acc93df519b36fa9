"""Two (or more) training runs side by side: loss and accuracy, and gradient flow per layer."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from gradwatch.report._data import as_run, finite_positive, wide
from gradwatch.report.figures._common import layer_axis, new_figure, not_recorded, step_colours

#: One colour per run, in the order given (the first is usually the original model).
RUN_COLOURS = ("#d62728", "#1a7f37", "#1f77b4", "#9467bd")


def training_comparison(
    runs: Mapping[str, Any],
    accuracy: Mapping[str, tuple[Sequence[int], Sequence[float]]] | None = None,
    chance: float | None = None,
) -> Figure:
    """Loss (left) and accuracy (right) of several training runs over the same steps.

    How to read it: one colour per run. The loss panel shows each recorded training loss
    (thin, pale) and its running mean over 20 steps (thick); the accuracy panel shows the
    accuracy on held-out data, measured every few steps, with its final value in the legend.
    Runs that saw the same batches in the same order differ only by the model: a curve that
    stays flat at the chance level (dotted line) while the other falls is a network whose
    gradient does not reach most of its layers.

    Args:
        runs: label -> a Run, a run directory path, or a Checkup; drawn in this order.
        accuracy: label -> (steps, accuracies in [0, 1]), e.g. measured on a test set during
            training; a run without an entry shows no accuracy line.
        chance: the accuracy of guessing (1 / number of classes), drawn as a dotted line.

    Returns:
        a matplotlib Figure with two panels (loss, accuracy).
    """
    fig, (ax_loss, ax_acc) = new_figure(1, 2, size=(12.0, 4.2))
    ax_loss.set_title("training loss", fontsize=10)
    ax_acc.set_title("held-out accuracy", fontsize=10)
    accuracy = accuracy or {}
    drawn_loss = drawn_acc = False
    for (label, run), colour in zip(runs.items(), _colours(len(runs)), strict=True):
        series = as_run(run).loss()
        if not series.empty:
            steps = series.index.to_numpy()
            values = series.to_numpy(dtype=float)
            ax_loss.plot(steps, values, lw=0.8, alpha=0.3, color=colour)
            ax_loss.plot(steps, _running_mean(values, 20), lw=2, color=colour, label=label)
            drawn_loss = True
        if label in accuracy:
            a_steps, a_values = (np.asarray(v, dtype=float) for v in accuracy[label])
            if len(a_values):
                ax_acc.plot(a_steps, a_values, marker="." if len(a_steps) < 60 else None,
                            lw=2, color=colour, label=f"{label}: {a_values[-1]:.1%}")
                drawn_acc = True
    if drawn_loss:
        ax_loss.set_xlabel("step")
        ax_loss.set_ylabel("loss")
        ax_loss.grid(True, alpha=0.3)
        ax_loss.legend(fontsize=8, loc="best")
    else:
        not_recorded(ax_loss, "loss", "pass it with mon.step(loss=loss)")
    if drawn_acc:
        if chance is not None:
            ax_acc.axhline(chance, ls=":", color="0.4", lw=1.2, label=f"chance: {chance:.0%}")
        ax_acc.set_ylim(-0.02, 1.02)
        ax_acc.set_xlabel("step")
        ax_acc.set_ylabel("accuracy")
        ax_acc.grid(True, alpha=0.3)
        ax_acc.legend(fontsize=8, loc="best")
    else:
        not_recorded(ax_acc, "accuracy", "give accuracy=(steps, values) per run")
    fig.suptitle("Training, side by side", fontsize=11)
    return fig


def flow_comparison(
    runs: Mapping[str, Any],
    steps: Sequence[int] | None = None,
    stat: str = "backprop_norm",
) -> Figure:
    """A gradient statistic per layer for each run (one panel each), at the same steps.

    How to read it: one panel per run, the same log scale in all of them, layers input side
    left. Each line is one step (light = early, dark = late), and the panels show the same
    steps, so the runs compare point for point. A line that falls towards the left by several
    decades is a vanishing gradient; a flat line means every layer gets a gradient of similar
    size.

    Args:
        runs: label -> a Run, a run directory path, or a Checkup.
        steps: steps to draw, taken from the steps all runs recorded (each replaced by the
            nearest common step); default the first, middle and last of them.
        stat: the statistic (default ``backprop_norm``, the back-propagated signal).

    Returns:
        a matplotlib Figure with one panel per run, sharing the y axis.
    """
    tables = {label: wide(as_run(run), stat) for label, run in runs.items()}
    present = [t for t in tables.values() if not t.empty]
    common = sorted(set.intersection(*(set(t.index) for t in present))) if present else []
    chosen = _pick(common, steps)
    fig, axes = new_figure(1, len(tables), size=(5.8 * len(tables), 4.4))
    positive = [finite_positive(t.loc[chosen].to_numpy(dtype=float)) for t in present if chosen]
    values = np.concatenate([p.ravel() for p in positive]) if positive else np.array([])
    values = values[np.isfinite(values)]
    for ax, (label, table) in zip(axes, tables.items(), strict=True):
        ax.set_title(f"{label}: {stat}", fontsize=10)
        if table.empty or not chosen:
            not_recorded(ax, stat)
            continue
        x = np.arange(table.shape[1])
        for step, colour in zip(chosen, step_colours(len(chosen)), strict=True):
            y = finite_positive(table.loc[step].to_numpy(dtype=float))
            ax.plot(x, y, marker="o", ms=3, lw=1.5, color=colour, label=f"step {step}")
        ax.set_yscale("log")
        if len(values):
            ax.set_ylim(values.min() / 3, values.max() * 3)
        ax.set_ylabel(stat)
        ax.set_xlabel("layer (input side → output side)")
        layer_axis(ax, list(table.columns))
        ax.grid(True, which="major", axis="y", alpha=0.3)
        ax.legend(fontsize=8, loc="best")
    fig.suptitle("Gradient flow per layer, same steps in every run", fontsize=11)
    return fig


def _pick(common: list[int], steps: Sequence[int] | None) -> list[int]:
    if not common:
        return []
    if steps is None:
        return sorted({common[0], common[(len(common) - 1) // 2], common[-1]})
    arr = np.asarray(common)
    return sorted({int(arr[np.abs(arr - int(s)).argmin()]) for s in steps})


def _running_mean(values: np.ndarray, window: int) -> np.ndarray:
    """Mean of the last ``window`` finite values at each position (shorter at the start)."""
    v = np.where(np.isfinite(values), values, 0.0)
    n = np.isfinite(values).astype(float)
    cs, cn = np.cumsum(v), np.cumsum(n)
    lag_s = np.concatenate([np.zeros(window), cs[:-window]])[: len(v)]
    lag_n = np.concatenate([np.zeros(window), cn[:-window]])[: len(v)]
    with np.errstate(invalid="ignore", divide="ignore"):
        return (cs - lag_s) / (cn - lag_n)


def _colours(n: int) -> list[str]:
    return [RUN_COLOURS[i % len(RUN_COLOURS)] for i in range(n)]
