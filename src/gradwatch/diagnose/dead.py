"""Rule ``dead``: ReLU-like units that are never positive, so pass no gradient.

A rectifier unit whose pre-activation is negative for every input outputs 0 and has zero
derivative: it neither learns nor passes gradient. Too large a learning rate or a large
negative bias kills units for good; deep, narrow ReLU nets can die at initialisation
(Lu et al. 2019, "Dying ReLU and Initialization").

``dead_frac`` is the fraction of a layer's units never positive over the batch. A healthy ReLU
unit is zero on a given sample half of the time, so on a batch of n samples it looks dead by
chance with probability 2^-n: a checkup on fewer than :data:`DEAD_MIN_BATCH` samples says
nothing about dead units and is skipped.
"""

from __future__ import annotations

from gradwatch.diagnose._view import RunView, layers_over, names, num, step_span, when
from gradwatch.findings import Finding

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
    lo = min(v for v in row if v > DEAD_FRAC)
    pct = f"{worst:.0%}" if len(layers) == 1 else f"{lo:.0%}-{worst:.0%}"
    subject = f"Layer {names(layers)} has" if len(layers) == 1 else f"Layers {names(layers)} have"
    message = (
        f"{subject} {pct} dead ReLU units (never positive on the batch)"
        f"{when(view, held, steps)}: they pass no gradient; try leaky ReLU, He init or a lower "
        "learning rate."
    )
    evidence = {
        "dead_frac": {ly: num(v) for ly, v in values.items()},
        "threshold": DEAD_FRAC,
        "error_threshold": DEAD_FRAC_ERROR,
        "step": held[-1],
        "steps_held": len(held),
        "persists": bool(still),
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
