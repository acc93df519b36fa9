"""Rule ``vanishing``: the back-propagated signal decays geometrically toward the input.

Through a chain of layers the gradient is a product of per-layer Jacobians, so it shrinks
(or grows) geometrically with depth (Bengio et al. 1994; Hochreiter 1991). Glorot & Bengio
(2010) showed it with sigmoid and tanh nets under "standard" init, He et al. (2015) for ReLU
nets under Xavier init (variance ×1/2 per layer), and mean-field theory puts it as
``E[δ_l²] ∝ χ1^(L-l)`` with χ1 < 1 in the ordered phase (Schoenholz et al. 2017).

The rule reads ``backprop_norm`` through same-shape steps (see :mod:`._flow`), not the
weight gradients: Glorot & Bengio found the weight gradients can look flat while the
back-propagated signal vanishes. The thresholds are :mod:`gradwatch.verdicts`'.
"""

from __future__ import annotations

import numpy as np

from gradwatch.diagnose._advice import advice, flow_remedies
from gradwatch.diagnose._flow import FlowStep, as_layers, flow_steps
from gradwatch.diagnose._view import RunView, loss_fell, names, num, persists, step_span, when
from gradwatch.diagnose.dead import DEAD_FRAC_ERROR
from gradwatch.findings import Finding
from gradwatch.verdicts import VANISHING_RATIO, depth_verdict
from gradwatch.wording import number, times

KEEP_PACE = 0.1
"""In a training run, input-side layers whose update ratio ``‖Δw‖/‖w‖`` is at least this
fraction of the median layer's still learn at the network's pace; with a loss that fell
(:data:`~gradwatch.diagnose._view.LOSS_FELL`) a vanishing back-propagated signal that does
not stop training is reported as a note (info). He et al. (2015): a 22-layer ReLU net under
Xavier init loses 2^-11 in ‖δ‖ yet converges."""

VANISHING_LAYER_RATIO = 1e-2
"""Layers whose signal is below this fraction of the output-side layer's are named in the
finding: they get under 1% of the top layers' signal."""


def vanishing_severity(fs: FlowStep) -> str | None:
    """Return "error", "warning" or None for one step's gradient flow."""
    v = depth_verdict(fs.vanishing_ratio, fs.factor, plain_chain=False)
    return v[1] if v else None


def cut_by_dead_units(view: RunView, fs: FlowStep) -> list[str]:
    """Layers almost wholly dead at ``fs.step`` when the signal below them is exactly 0.

    Such layers cut the signal (the dead rule's finding, its cause); a signal that is small
    but not zero is vanishing whatever the dead units.
    """
    if float(np.min(fs.bp)) > 0:
        return []
    step = fs.step
    dead = view.wide("dead_frac")
    earlier = [s for s in dead.index if s <= step]  # a detail statistic: the latest one
    if dead.empty or not earlier:
        return []
    row = dead.loc[earlier[-1]]
    return [str(ly) for ly, v in row.items() if v == v and v > DEAD_FRAC_ERROR]


def still_learning(view: RunView, layers: list[str]) -> dict[str, float] | None:
    """The numbers that show a run learning despite the vanishing signal, or None.

    Needs ``update_ratio`` (an optimizer) and a loss: the named layers' median update ratio
    over the last fifth of the run is at least :data:`KEEP_PACE` of the median layer's, and
    the loss fell (:func:`~gradwatch.diagnose._view.loss_fell`).
    """
    ur = view.wide("update_ratio")
    cols = [c for c in layers if c in ur.columns]
    fell = loss_fell(view)
    if ur.empty or not cols or fell is None:
        return None
    tail = ur.iloc[-max(1, len(ur) // 5) :]
    arr = tail.to_numpy(dtype=np.float64)
    overall = float(np.nanmedian(arr)) if np.isfinite(arr).any() else np.nan
    mine = tail[cols].to_numpy(dtype=np.float64)
    named = float(np.nanmedian(mine)) if np.isfinite(mine).any() else np.nan
    if not (overall > 0 and named >= KEEP_PACE * overall):
        return None
    return {"loss_start": fell[0], "loss_end": fell[1], "pace": named / overall}


def rule(view: RunView) -> list[Finding]:
    """Report a back-propagated signal that shrinks toward the input.

    A signal cut by layers whose units are almost all dead is the dead rule's finding (the
    cause), not a second, vanishing one.
    """
    steps = flow_steps(view)
    cut = {fs.step for fs in steps if vanishing_severity(fs) and cut_by_dead_units(view, fs)}
    held = [fs for fs in steps if vanishing_severity(fs) and fs.step not in cut]
    held_steps = [fs.step for fs in held]
    recorded = [fs.step for fs in steps]
    if not persists(held_steps, recorded):
        return []
    last = held[-1]
    severity = vanishing_severity(last) or "warning"
    # Not cleared if every later step's signal is cut to zero by units that died meanwhile:
    # the gradient vanished first, and the units died in a net that could not learn (the
    # dead finding names them; the vanishing signal is the cause, as at initialisation).
    still = all(s in cut for s in recorded if s > held_steps[-1])
    if not still:
        severity = "info"  # cleared by the end of the run: a note, not the run's verdict
    pairs = zip(last.layers, last.ratios, strict=True)
    layers = [ly for ly, r in pairs if r < VANISHING_LAYER_RATIO]
    layers = as_layers(view, layers or [last.layers[0]])
    remedies = flow_remedies(view, "vanishing")
    learning = None if view.is_checkup else still_learning(view, layers)
    if learning is not None:
        severity = "info"
    flat = ""
    if last.grad_total == last.grad_total and last.grad_total > 10 * last.total:
        flat = (
            " (their weight gradients do not shrink, so they look healthy)"
            if last.grad_total >= 1
            else f" (their weight gradients only shrink to {times(last.grad_total)}, so they "
            "look flatter)"
        )
    figure = f"to lift the per-layer factor {number(last.factor)} toward 1"
    total = last.vanishing_ratio
    across = ""
    if total < last.total:  # shape changes crossed: the factor holds over them too
        across = (f", over all {last.depth} layers crossed; {times(last.total)} over the "
                  f"{last.counted} steps between layers of one shape")
    message = (
        f"The back-propagated gradient shrinks to {times(total)} of its size from layer "
        f"'{last.layers[-1]}' to '{last.layers[0]}' ({number(last.factor)} per layer"
        f"{', along the residual stream' if view.path == 'residual' else ''}{across})"
        f"{when(view, held_steps, recorded)}: the input-side layers {names(layers)} barely "
        f"learn{flat}; {advice(remedies, figure=figure)}."
    )
    if learning is not None:
        message = (
            f"The back-propagated gradient shrinks to {times(total)} of its size from "
            f"layer '{last.layers[-1]}' to '{last.layers[0]}'{when(view, held_steps, recorded)}"
            f", but the run learns: the loss fell from {number(learning['loss_start'])} to "
            f"{number(learning['loss_end'])} and the input-side layers update at "
            f"{times(learning['pace'])} the median layer's rate; if it should learn "
            f"faster, {advice(remedies, figure=figure)}."
        )
    evidence = {
        **last.evidence(),
        "layers_below": list(layers),
        "layer_threshold": VANISHING_LAYER_RATIO,
        "ratio_threshold": VANISHING_RATIO,
        "steps_held": len(held_steps),
        "steps_recorded": len(recorded),
        "persists": bool(still),
        "crossed_decay": num(total),
        "min_backprop_ratio": num(min(fs.total for fs in held)),
        "still_learning": learning,
    }
    return [
        Finding(
            kind="vanishing",
            layers=tuple(layers),
            steps=step_span(view, held_steps),
            severity=severity,  # type: ignore[arg-type]
            message=message,
            evidence=evidence,
            remedies=remedies,
        )
    ]
