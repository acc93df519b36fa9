"""Rule ``saturated``: sigmoid and tanh units stuck in their flat tails.

In its tails a sigmoid or tanh has almost no slope, so a saturated unit passes almost no
gradient (at most ~6% of tanh's peak slope at |a| > 0.97, ~12% of the sigmoid's). Glorot &
Bengio (2010) saw two patterns: with "standard" init, tanh layers saturate one after another;
with sigmoid, the top hidden layer is driven to 0 (its saturation value) early in training and
only slowly escapes, which they tie to the non-zero mean of the sigmoid. The rule reports both.

A sigmoid whose output multiplies another signal is a **gate** (a highway layer's transform
gate, Srivastava et al. 2015; an LSTM or GRU cell's gates; a squeeze-and-excitation scale),
found in the autograd graph (``meta["structure"]["gate_layers"]``,
:func:`gradwatch.graph.read_graph`). A gate near 0 or 1 is closed or open, which is what it is
for: the gradient reaches the input through the signal it lets pass (a highway layer's
carry path), not through its slope. Gate layers are left out of both patterns.
"""

from __future__ import annotations

import numpy as np

from gradwatch.diagnose._view import RunView, layers_over, names, num, persists, step_span, when
from gradwatch.findings import Finding

SATURATED_FRAC = 0.3
"""More than 30% of a layer's units in the flat tails: a warning. A well-scaled tanh layer
(pre-activation variance near 1) has ~5% of its outputs beyond |a| > 0.97."""

SATURATED_FRAC_ERROR = 0.8
"""More than 80%: an error; the layer has almost no slope left for the gradient."""

TOP_SATURATION_MEAN = 0.1
"""The top hidden sigmoid layer with a mean activation below this is stuck near its lower
saturation value 0 (Glorot & Bengio 2010, Figure 2: the top layer's mean drops to ~0 early)."""

REMEDIES = ("xavier_init", "tanh_or_relu", "batchnorm")


def rule(view: RunView) -> list[Finding]:
    """Report saturated sigmoid/tanh layers and the top sigmoid layer stuck at 0."""
    return _saturated(view) + _top_layer(view)


def gate_layers(view: RunView) -> set[str]:
    """The layers whose output a gate's sigmoid reads (from the recorded autograd graph)."""
    return {str(g) for g in view.structure.get("gate_layers") or ()}


def _saturated(view: RunView) -> list[Finding]:
    over = layers_over(view, "saturated_frac", SATURATED_FRAC, exclude=gate_layers(view))
    if over is None:
        return []
    values, row, held, steps = over
    layers = list(values)
    worst = float(row.max())
    still = held[-1] == steps[-1]
    severity = ("error" if worst > SATURATED_FRAC_ERROR else "warning") if still else "info"
    subject = f"Layer {names(layers)} has" if len(layers) == 1 else f"Layers {names(layers)} have"
    message = (
        f"{subject} up to {worst:.0%} of their sigmoid/tanh units saturated in the flat tails"
        f"{when(view, held, steps)}, where almost no gradient passes; use Xavier init, "
        "a ReLU-like activation or batch norm."
    )
    evidence = {
        "saturated_frac": {ly: num(v) for ly, v in values.items()},
        "threshold": SATURATED_FRAC,
        "error_threshold": SATURATED_FRAC_ERROR,
        "step": held[-1],
        "steps_held": len(held),
        "persists": bool(still),
    }
    return [
        Finding(
            "saturated",
            tuple(layers),
            step_span(view, held),
            severity,  # type: ignore[arg-type]
            message,
            evidence,
            REMEDIES,
        )
    ]


def _top_layer(view: RunView) -> list[Finding]:
    """Glorot & Bengio's top hidden sigmoid layer, saturated at 0."""
    if "sigmoid" not in view.families:
        return []
    sat = view.wide("saturated_frac")
    mean, std = view.wide("act_mean"), view.wide("act_std")
    output_layer = view.layers[-1] if view.layers else None
    gates = gate_layers(view)
    hidden = [
        c for c in sat.columns
        if c != output_layer and c in mean.columns and c in std.columns and c not in gates
    ]
    if not hidden:
        return []
    top = hidden[-1]
    m = mean[top].to_numpy(dtype=np.float64)
    s = std[top].to_numpy(dtype=np.float64)
    # Values in [0, 1] have std² <= mean (1 - mean) (Bhatia-Davis): a tanh layer saturated on
    # both sides (mean ~0, std ~1) fails it, a sigmoid layer stuck at 0 passes.
    stuck = (m >= 0) & (m < TOP_SATURATION_MEAN) & (s**2 <= m * (1 - m) + 1e-6)
    steps = [int(x) for x in mean.index]
    held = [st for st, h in zip(steps, stuck, strict=True) if h]
    if not persists(held, steps):
        return []
    i = steps.index(held[-1])
    still = held[-1] == steps[-1]
    message = (
        f"The top hidden sigmoid layer '{top}' is stuck near 0 (mean activation {m[i]:.2g})"
        f"{when(view, held, steps)}, the saturation Glorot & Bengio (2010) saw stall training; "
        "use Xavier init, tanh or ReLU, or batch norm."
    )
    evidence = {
        "layer": top,
        "act_mean": num(m[i]),
        "act_std": num(s[i]),
        "threshold": TOP_SATURATION_MEAN,
        "step": held[-1],
        "steps_held": len(held),
        "persists": bool(still),
    }
    return [
        Finding(
            "saturated",
            (top,),
            step_span(view, held),
            "warning" if still else "info",
            message,
            evidence,
            REMEDIES,
        )
    ]
