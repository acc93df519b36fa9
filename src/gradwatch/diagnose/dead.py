"""Rule ``dead``: ReLU-like units that are never positive, so pass no gradient.

A rectifier unit whose pre-activation is negative for every input outputs 0 and has zero
derivative: it neither learns nor passes gradient. Too large a learning rate or a large
negative bias kills units for good; deep, narrow ReLU nets can die at initialisation
(Lu et al. 2019, "Dying ReLU and Initialization").

``dead_frac`` is the fraction of a layer's units never positive over the batch (for a
convolution a unit is a channel, dead when never positive over the batch and positions).
A verdict of "dead" means a layer the gradient can hardly cross: in a training run that
learns (its loss fell, :data:`~gradwatch.diagnose._view.LOSS_FELL`) a layer with fewer than
:data:`DEAD_FRAC_ERROR` of its units dead is a note, its live units carrying the signal.

A healthy ReLU unit is zero on a given sample half of the time, so on a batch of n samples
it looks dead by chance with probability 2^-n: a checkup on fewer than
:data:`DEAD_MIN_BATCH` samples says nothing about dead units and is skipped.
"""

from __future__ import annotations

from gradwatch.diagnose._view import RunView, layers_over, loss_fell, names, num, step_span, when
from gradwatch.findings import Finding
from gradwatch.wording import number

DEAD_FRAC = 0.5
"""More than half of a layer's units dead: a warning (the layer has lost most of its width)."""

DEAD_FRAC_ERROR = 0.9
"""More than 90% dead: an error; the layer is nearly a wall for the gradient."""

DEAD_MIN_BATCH = 4
"""Smallest checkup batch on which dead units mean something (2^-4 = 6% chance per unit)."""

REMEDIES = ("leaky_relu", "he_init", "lower_lr")


def rule(view: RunView) -> list[Finding]:
    """Report layers with mostly dead ReLU-like units."""
    batch = view.checkup.get("batch_size")
    if view.is_checkup and batch is not None and batch < DEAD_MIN_BATCH:
        return []
    over = layers_over(view, "dead_frac", DEAD_FRAC)
    if over is None:
        return []
    values, row, held, steps = over
    layers = list(values)
    worst = float(row.max())
    still = held[-1] == steps[-1]
    severity = ("error" if worst > DEAD_FRAC_ERROR else "warning") if still else "info"
    fell = loss_fell(view) if worst <= DEAD_FRAC_ERROR else None
    if fell is not None:
        severity = "info"  # the layer's live units carry the signal: the run learns
    lo = min(v for v in row if v > DEAD_FRAC)
    pct = f"{worst:.0%}" if len(layers) == 1 else f"{lo:.0%}-{worst:.0%}"
    subject = f"Layer {names(layers)} has" if len(layers) == 1 else f"Layers {names(layers)} have"
    message = (
        f"{subject} {pct} dead ReLU units (never positive on the batch)"
        f"{when(view, held, steps)}: they pass no gradient; try leaky ReLU, He init or a lower "
        "learning rate."
    )
    if fell is not None:
        message = (
            f"{subject} {pct} dead ReLU units (never positive on the batch)"
            f"{when(view, held, steps)}, but the live ones carry the signal: the loss fell from "
            f"{number(fell[0])} to {number(fell[1])}; if it should learn faster, try leaky ReLU "
            "or a lower learning rate."
        )
    evidence = {
        "dead_frac": {ly: num(v) for ly, v in values.items()},
        "threshold": DEAD_FRAC,
        "error_threshold": DEAD_FRAC_ERROR,
        "step": held[-1],
        "steps_held": len(held),
        "persists": bool(still),
        "loss_fell": list(fell) if fell is not None else None,
    }
    return [
        Finding(
            "dead",
            tuple(layers),
            step_span(view, held),
            severity,  # type: ignore[arg-type]
            message,
            evidence,
            REMEDIES,
        )
    ]
