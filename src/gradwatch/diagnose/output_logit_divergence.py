"""Rule ``output_logit_divergence``: the output logits drift away (log Z far from its start).

Cross-entropy does not pin the level of the output logits; at a high learning rate, without
weight decay, their log-partition ``log Z = logsumexp(z)`` drifts by tens of nats and the
loss diverges; z-loss (``1e-4 · (log Z)²`` added to the loss) holds it (Chowdhery et al. 2022,
PaLM §5; Wortsman et al. 2023, §3.2). The rule reads ``logsumexp_mean`` (detail steps) and
fires when it moves more than :data:`~gradwatch.diagnose._precursors.LSE_DRIFT` nats from its
first recorded value, with the lead time to the loss spike that followed. Its finding counts toward
the verdict "exploding".
"""

from __future__ import annotations

from gradwatch.diagnose._advice import advice
from gradwatch.diagnose._precursors import lasting, lead_phrase, logit_onset
from gradwatch.diagnose._view import RunView, loss_fell, num, step_span
from gradwatch.findings import Finding
from gradwatch.wording import number

REMEDIES = ("z_loss", "lower_lr", "warmup")


def rule(view: RunView) -> list[Finding]:
    """Report a log-partition of the output logits that drifted far from its start."""
    onset = logit_onset(view)
    if onset is None:
        return []
    ev = onset.evidence
    phrase, lead, spike = lead_phrase(view, onset.step)
    message = (
        f"The output logits diverge: their mean log Z (logsumexp over the classes) moved from "
        f"{number(ev['logsumexp_mean_early'])} to {number(ev['logsumexp_mean_at_onset'])} by "
        f"step {onset.step} ({number(ev['logsumexp_mean_last'])} at the last recorded step). "
        f"Warned {phrase}; {advice(REMEDIES)}."
    )
    evidence = {**{k: num(v) for k, v in ev.items()}, "onset_step": onset.step,
                "lead_time": lead, "spike_step": spike.step if spike is not None else None}
    last = int(view.steps[-1]) if view.steps else onset.step
    # softmax ignores a shift of the logits: log Z drifting while the loss falls is a
    # classifier growing confident, a note; with the loss stalled or spiking, a warning
    if spike is not None and (lead or 0) >= 0 and lasting(view, spike):
        severity = "error"
    elif loss_fell(view) is not None:
        severity = "info"
    else:
        severity = "warning"
    return [
        Finding(
            "output_logit_divergence",
            (),
            step_span(view, [onset.step, last]),
            severity,
            message,
            evidence,
            REMEDIES,
        )
    ]
