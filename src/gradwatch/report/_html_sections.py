"""Sections of the HTML report beyond one run: training runs side by side, and notes.

:func:`comparison_section` shows several watched training runs of the same task (the demo's
original and fixed models): their verdicts, loss and accuracy over steps, and the gradient
flow per layer at the same steps. :func:`saturation_note` says what the saturation panel
measures, and why it can read near 0% in a sigmoid net whose gradient still vanishes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from gradwatch.report._data import as_run, wide
from gradwatch.report._html_parts import esc, figure_block
from gradwatch.store.reader import Run

#: Below this largest saturated fraction the saturation panel gets its explanation of why.
LOW_SATURATION = 0.05


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
