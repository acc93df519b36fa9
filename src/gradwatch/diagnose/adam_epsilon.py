"""Rule ``adam_epsilon``: Adam's ε, not the gradient, sets the size of a layer's update.

Adam divides the averaged gradient by √v̂ + ε. Where the gradient's scale falls to ε (wide
layers, a loss that has become small, a long run), ε dominates the denominator and the update
shrinks with the gradient instead of staying near the learning rate: the layer slows down or
stops (Wortsman et al. 2023, "Small-scale proxies for large-scale Transformer training
instabilities", §3.4; their fix is ε = 1e-15). The rule reads ``eps_frac`` (the fraction of a
layer's entries with ε ≥ √v̂, detail steps, Adam/AdamW) and ``update_rms`` and fires when
more than :data:`~gradwatch.diagnose._precursors.EPS_FRAC` of a layer's entries are
dominated, at the last recorded step or at a fifth of them. Severity warning; it is a cause
of slow training, not a verdict of its own.
"""

from __future__ import annotations

import numpy as np

from gradwatch.diagnose._advice import advice
from gradwatch.diagnose._precursors import EPS_FRAC, lead_phrase
from gradwatch.diagnose._view import RunView, layers_over, names, num, step_span, when
from gradwatch.findings import Finding
from gradwatch.wording import number

REMEDIES = ("adam_eps",)


def rule(view: RunView) -> list[Finding]:
    """Report layers where Adam's ε dominates most of the update's denominator."""
    if view.is_checkup:
        return []
    got = layers_over(view, "eps_frac", EPS_FRAC)
    if got is None:
        return []
    over, _, held, steps = got
    layers = [ly for ly in view.layers if ly in over]
    rms = view.wide("update_rms")
    rms_now = {
        ly: num(rms.at[held[-1], ly]) for ly in layers
        if not rms.empty and held[-1] in rms.index and ly in rms.columns
    }
    worst = max(over, key=over.get)
    phrase, lead, spike = lead_phrase(view, held[0])
    shown = rms_now.get(worst)
    rms_text = (f"; its update is {number(shown)}× the learning rate (RMS), not ~1"
                if isinstance(shown, float) and np.isfinite(shown) else "")
    message = (
        f"Adam's ε dominates the update in {names(layers)}{when(view, held, steps)}: for "
        f"{number(100 * over[worst])}% of '{worst}''s entries ε ≥ √v̂{rms_text}, so these "
        f"weights barely move. Seen first {phrase}; {advice(REMEDIES)}."
    )
    evidence = {
        "eps_frac": {ly: num(over[ly]) for ly in layers},
        "update_rms": rms_now,
        "threshold": EPS_FRAC,
        "first_step": held[0],
        "steps_held": len(held),
        "lead_time": lead,
    }
    return [Finding("adam_epsilon", tuple(layers), step_span(view, held), "warning", message,
                    evidence, REMEDIES)]
