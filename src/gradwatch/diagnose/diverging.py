"""Rule ``diverging``: a training loss that climbs by an order of magnitude and stays there.

A learning rate past the stable limit of the loss surface's curvature (η > 2/λ_max for
gradient descent) makes the loss grow step after step instead of shrinking; the gradients it
produces grow with it until they overflow (LeCun et al. 1998, "Efficient BackProp", §4.7;
Pascanu, Mikolov & Bengio 2013 for the cliffs of recurrent nets). The rule compares the loss at
the end of the run (median of its last recorded fifth) with the best loss seen before it and
with the loss at the start: ending :data:`~gradwatch.verdicts.DIVERGING_LOSS` times above the
best, and above the start, is divergence. Its finding counts toward the verdict "exploding".
Non-finite losses are the nonfinite rule's.
"""

from __future__ import annotations

import math

import numpy as np

from gradwatch.diagnose._view import RunView, finite_loss, num, step_span
from gradwatch.findings import Finding
from gradwatch.verdicts import DIVERGING_LOSS
from gradwatch.wording import number, times

DIVERGING_MIN_STEPS = 5
"""Fewer recorded losses than this say nothing about a trend."""

REMEDIES = ("lower_lr", "warmup", "clip_grad_norm")


def rule(view: RunView) -> list[Finding]:
    """Report a loss that ends far above its best and its starting value."""
    if view.is_checkup:
        return []
    st, v = finite_loss(view)
    if len(v) < DIVERGING_MIN_STEPS:
        return []
    tail = max(1, len(v) // 5)
    end = float(np.median(v[-tail:]))
    start = float(np.median(v[: min(3, len(v) - tail)]))
    best = float(np.min(v[: len(v) - tail]))
    floor = max(abs(best), 1e-8)
    if not (end > DIVERGING_LOSS * floor and end > start and end - best > abs(start) * 0.5):
        return []
    first_bad = next(
        (s for s, x in zip(st, v, strict=True) if x > math.sqrt(DIVERGING_LOSS) * floor), st[-1]
    )
    message = (
        f"The loss diverges: from {number(start)} at the start and {number(best)} at best it "
        f"climbs to {number(end)} ({times(end / floor)} its best) by step {st[-1]}; lower the "
        "learning rate, warm it up or clip the gradient norm."
    )
    evidence = {
        "loss_start": num(start),
        "loss_best": num(best),
        "loss_end": num(end),
        "growth": num(end / floor),
        "threshold": DIVERGING_LOSS,
        "first_step_above": int(first_bad),
    }
    return [
        Finding(
            "diverging",
            (),
            step_span(view, [first_bad, st[-1]]),
            "error",
            message,
            evidence,
            REMEDIES,
        )
    ]
