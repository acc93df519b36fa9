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

Dead units block the gradient only on the path it takes. Inside a residual branch they do
not: the stream bypasses the branch (and a branch that starts at scale 0, SkipInit's α or
a zero-initialised last norm, passes nothing either way). When every layer over the line
sits inside residual branches (``structure["residual_branches"]``, the branch's output layer
left on the path) and the gradient along the path does not vanish, the finding is a note.
"""

from __future__ import annotations

from gradwatch.diagnose._flow import branch_layers, flow_steps
from gradwatch.diagnose._view import RunView, layers_over, loss_fell, names, num, step_span, when
from gradwatch.findings import Finding
from gradwatch.verdicts import depth_verdict
from gradwatch.wording import number, times

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
    bypass = bypassed(view, layers, held[-1])
    if bypass is not None:
        return [_bypassed(view, layers, values, held, steps, subject, pct, bypass)]
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
        **_base_evidence(values, held, steps),
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


def bypassed(view: RunView, layers: list[str], step: int) -> dict | None:
    """Evidence that ``layers`` are off the gradient's path at ``step``, or None.

    They are when each sits inside a residual branch (not its output layer) and the flow
    along the path (:func:`~gradwatch.diagnose._flow.flow_steps`, the residual stream where
    a checkup measured it) does not vanish at that step.
    """
    inside, kept = branch_layers(view)
    if not inside or not set(layers) <= inside:
        return None
    fs = next((f for f in flow_steps(view) if f.step == step), None)
    if fs is None:
        return None
    v = depth_verdict(fs.vanishing_ratio, fs.factor, plain_chain=False)
    if v is not None and v[0] == "vanishing":
        return None
    scales = [s for s in view.structure.get("branch_scales") or () if isinstance(s, int | float)]
    return {"backprop_ratio": num(fs.total), "per_layer_factor": num(fs.factor),
            "input_side_layer": fs.layers[0], "output_side_layer": fs.layers[-1],
            "branches_start_at_zero": bool(scales) and all(s == 0 for s in scales)}


def _bypassed(view: RunView, layers: list[str], values, held: list[int], steps: list[int],
              subject: str, pct: str, bypass: dict) -> Finding:
    zero = " (every branch starts at scale 0, so its units carry nothing yet)" if bypass[
        "branches_start_at_zero"] else ""
    message = (
        f"{subject} {pct} ReLU units that are never positive on the batch"
        f"{when(view, held, steps)}, inside residual branches that the stream bypasses{zero}: "
        f"the gradient reaches the input side along the stream ({times(bypass['backprop_ratio'])} "
        f"from '{bypass['output_side_layer']}' to '{bypass['input_side_layer']}'), so they "
        "block no path; if they stay off once the net has trained, try leaky ReLU."
    )
    evidence = {**_base_evidence(values, held, steps), "bypassed": True, **bypass}
    return Finding("dead", tuple(layers), step_span(view, held), "info", message, evidence,
                   ("leaky_relu",))


def _base_evidence(values, held: list[int], steps: list[int]) -> dict:
    """The figures every dead finding carries."""
    return {
        "dead_frac": {ly: num(v) for ly, v in values.items()},
        "threshold": DEAD_FRAC,
        "error_threshold": DEAD_FRAC_ERROR,
        "step": held[-1],
        "steps_held": len(held),
        "persists": bool(held[-1] == steps[-1]),
    }
