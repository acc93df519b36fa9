"""Sections of the HTML report beyond one run: training runs side by side, and notes.

:func:`comparison_section` shows several watched training runs of the same task (the demo's
original and fixed models): their verdicts, loss and accuracy over steps, and the gradient
flow per layer at the same steps. :func:`saturation_note` says what the saturation panel
measures, and why it can read near 0% in a sigmoid net whose gradient still vanishes.
"""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from gradwatch.errors import GradwatchTypeError, GradwatchValueError
from gradwatch.report._data import as_run, wide
from gradwatch.report._html_parts import esc, figure_block
from gradwatch.store.reader import Run

#: Below this largest saturated fraction the saturation panel gets its explanation of why.
LOW_SATURATION = 0.05


def check_comparison(compare: Any, accuracy: Any, chance: Any) -> None:
    """Check the arguments of the side-by-side section (see :func:`comparison_section`).

    Raises:
        GradwatchTypeError: ``compare`` or ``accuracy`` is not a mapping of the right items,
            or ``chance`` is not a number.
        GradwatchValueError: an accuracy series whose steps and values differ in length, or
            ``chance`` outside [0, 1].
    """
    if compare is not None:
        if not isinstance(compare, Mapping):
            raise GradwatchTypeError(
                f"compare must be a dict label -> run (a Run or a run directory), got "
                f"{type(compare).__name__}; e.g. compare={{'before': 'runs/a', 'after': 'runs/b'}}"
            )
        for label, run in compare.items():
            if not isinstance(label, str):
                raise GradwatchTypeError(
                    f"compare's labels must be strings, got {type(label).__name__} {label!r:.40}"
                )
            if not isinstance(run, Run | str | os.PathLike):
                raise GradwatchTypeError(
                    f"compare[{label!r}] must be a Run or a run directory path, got "
                    f"{type(run).__name__}"
                )
    if accuracy is not None:
        if not isinstance(accuracy, Mapping):
            raise GradwatchTypeError(
                f"accuracy must be a dict label -> (steps, accuracies), got "
                f"{type(accuracy).__name__}"
            )
        for label, series in accuracy.items():
            ok = isinstance(series, tuple | list) and len(series) == 2 and all(
                isinstance(s, Sequence | np.ndarray) and not isinstance(s, str) for s in series)
            if not ok:
                raise GradwatchTypeError(
                    f"accuracy[{label!r}] must be a pair (steps, accuracies) of sequences, got "
                    f"{type(series).__name__}"
                )
            if len(series[0]) != len(series[1]):
                raise GradwatchValueError(
                    f"accuracy[{label!r}] has {len(series[0])} steps and {len(series[1])} "
                    "accuracies; give one accuracy per step"
                )
    if chance is not None:
        if isinstance(chance, bool) or not isinstance(chance, numbers.Real):
            raise GradwatchTypeError(
                f"chance must be a number in [0, 1] or None, got {type(chance).__name__}"
            )
        if not 0.0 <= float(chance) <= 1.0:
            raise GradwatchValueError(f"chance must be in [0, 1] (an accuracy), got {chance}")


def comparison_section(
    runs: Mapping[str, Any],
    accuracy: Mapping[str, tuple[Sequence[int], Sequence[float]]] | None = None,
    chance: float | None = None,
) -> str:
    """The "training runs side by side" section: loss and accuracy curves, gradient flow.

    The runs' verdicts and numbers are in the outcome at the top of the page
    (:mod:`gradwatch.report._html_outcome`).

    Args:
        runs: label -> a Run or a run directory path, in the order to show them.
        accuracy: label -> (steps, held-out accuracy in [0, 1]) measured during training.
        chance: the accuracy of guessing, drawn as a dotted line.

    Returns:
        the section's HTML.
    """
    from gradwatch.report.figures.comparison import flow_comparison, training_comparison

    loaded = {label: as_run(run) for label, run in runs.items()}
    accuracy = accuracy or {}
    labels = ", ".join(loaded)
    return "\n".join([
        "<section><h2>Both training runs, side by side</h2>",
        f'<p class="help">The runs ({esc(labels)}) trained on the same batches in the same '
        "order with the same optimizer; only the model differs. Each was watched by gradwatch "
        "and diagnosed when it closed; accuracy is measured on held-out data every few "
        "steps. Their numbers are in the table at the top of the page.</p>",
        figure_block(lambda: training_comparison(loaded, accuracy, chance), training_comparison,
                     "Loss and held-out accuracy over training steps"),
        figure_block(lambda: flow_comparison(loaded), flow_comparison,
                     "Back-propagated signal per layer, before and after, at the same steps"),
        "</section>",
    ])


def saturation_note(run: Run) -> str:
    """What the saturation panel measures and, when it reads near 0%, why (HTML, escaped).

    Returns:
        an empty string when the run holds no ``saturated_frac``.
    """
    table = wide(run, "saturated_frac")
    if table.empty:
        return ""
    top = float(np.nanmax(table.to_numpy(dtype=float))) if table.notna().any().any() else math.nan
    text = (
        "saturated_frac is the share of sigmoid/tanh outputs in their flat tails (sigmoid "
        "below 0.03 or above 0.97, tanh beyond ±0.97), where the derivative is under about 12% "
        "of its peak."
    )
    if math.isfinite(top) and top < LOW_SATURATION:
        text += (
            f" Here it never passes {top:.1%}. That does not mean the gradient is fine: with a "
            "standard initialisation the pre-activations are small, so sigmoid units sit near "
            "0.5, in the middle of the curve and not in its tails. There the derivative is at "
            "most 1/4, and every layer multiplies the back-propagated gradient by it, so a deep "
            "stack loses the gradient geometrically without saturating (Glorot & Bengio 2010, "
            "who also saw the top layer drift into saturation later in training). The remedy "
            "is the same: an activation whose derivative is 1 (ReLU with He init), or an init "
            "that keeps the signal's scale."
        )
    return f'<p class="help" id="gw-saturation-note">{esc(text)}</p>'
