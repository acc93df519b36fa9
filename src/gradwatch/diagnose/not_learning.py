"""Rule ``not_learning``: a run whose loss does not fall, with no gradient problem to explain it.

The other rules name what stops a run (a vanishing, exploding or non-finite gradient, across
depth or through time, dead or saturated units). When the loss stays where it started and
none of them fires, the cause is outside what gradient statistics can show: the optimizer's
schedule (a post-LN transformer trained with Adam without warmup, Xiong et al. 2020), the
learning rate, the data or the labels. Saying "healthy" would be a miss and naming a cause a
guess, so the finding is kind "uncertain" (severity warning), with the reason, the flow
through time where the run recorded it, and what to try. Any finding of the other kinds
takes precedence in the verdict.
"""

from __future__ import annotations

import numpy as np

from gradwatch.diagnose._advice import advice, family, flow_remedies
from gradwatch.diagnose._view import RunView, num, step_span
from gradwatch.diagnose.temporal import run_flows
from gradwatch.findings import Finding
from gradwatch.probes import INPUT
from gradwatch.wording import number

NOT_LEARNING = 0.95
"""A loss that ends (median of the last fifth of the run) above this fraction of its start
(median of the first three recorded losses) has not been learnt down."""

NOT_LEARNING_MIN_STEPS = 20
"""Fewer recorded losses than this are too short a run to call it stuck."""


def rule(view: RunView) -> list[Finding]:
    """Report a loss that does not fall over the run."""
    if view.is_checkup:
        return []
    loss = view.loss
    values = loss.to_numpy(dtype=np.float64)
    ok = np.isfinite(values)
    if ok.sum() < NOT_LEARNING_MIN_STEPS or not ok.all():
        return []  # non-finite losses are the nonfinite rule's
    steps = [int(s) for s in loss.index]
    start = float(np.median(values[:3]))
    end = float(np.median(values[-max(1, len(values) // 5) :]))
    if not (start > 0 and end >= NOT_LEARNING * start):
        return []
    fam = family(view)
    why = (
        "the gradients show no vanishing, exploding, dead or saturated layer that would "
        "explain it, so the cause is elsewhere (learning-rate schedule, data or labels)"
    )
    flows = run_flows(view)
    if flows:
        said = ", ".join(
            f"{'the input' if k == INPUT else repr(k)} {number(v['first_over_last'])}"
            for k, v in list(flows.items())[:3]
        )
        why = (
            "the gradients show no vanishing, exploding, dead or saturated layer, and the "
            f"gradient through time recorded at the detail steps arrives (first over last "
            f"time step at the end: {said}), so the cause is elsewhere (learning-rate "
            "schedule, data or labels)"
        )
    remedies = flow_remedies(view, "vanishing") if fam != "plain" else ("lower_lr", "warmup")
    message = (
        f"The loss has not fallen in {len(values)} recorded steps ({number(start)} at the "
        f"start, {number(end)} at the end); {why}; {advice(remedies)}."
    )
    evidence = {
        "rule": "not_learning",
        "loss_start": num(start),
        "loss_end": num(end),
        "threshold": NOT_LEARNING,
        "family": fam,
        "reason": why,
    }
    return [
        Finding(
            "uncertain",
            (),
            step_span(view, [steps[0], steps[-1]]),
            "warning",
            message,
            evidence,
            tuple(remedies),
        )
    ]
