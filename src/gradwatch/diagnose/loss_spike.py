"""Rule ``loss_spike``: the loss jumps above its recent level, and what came before it.

A loss spike is judged against a robust baseline of the steps just before it (the median of
the last :data:`~gradwatch.diagnose._precursors.WINDOW` recorded losses, with a band of
:data:`~gradwatch.diagnose._precursors.SPIKE_SIGMAS` robust standard deviations from the
median absolute deviation, at least :data:`~gradwatch.diagnose._precursors.SPIKE_REL` of the
median): the noise of minibatches widens the band, a falling loss never spikes. The finding
names the spike's step, the first step at which a precursor was seen (attention logits
growth began, and gives the lead time between them. A spike the loss has not come back from
by the last recorded step is an error; one it came back from but whose run ends above the
level before the spike is a warning; both count toward the verdict "exploding" (a run that
blows up). A spike the run recovered from for good (its last losses back within the band) is
a note (severity "info"): it did not stop the run. Non-finite losses are the nonfinite
rule's.

References: Chowdhery et al. 2022 (PaLM: spikes, restarts); Wortsman et al. 2023; the
BLOOM-176B training chronicles (gradient-norm spikes before loss spikes).
"""

from __future__ import annotations

from gradwatch.diagnose._advice import advice
from gradwatch.diagnose._precursors import (
    WINDOW,
    Onset,
    attention_onset,
    end_level,
    grad_spikes,
    lasting,
    leading_layers,
    logit_onset,
    loss_spikes,
)
from gradwatch.diagnose._view import RunView, names, num, step_span
from gradwatch.findings import Finding
from gradwatch.wording import number

#: A gradient spike this many recorded steps before a loss spike is a precursor of it.
GRAD_LOOKBACK = WINDOW

_WHAT = {
    "attention_logit_growth": "attention logits growing past their threshold",
    "output_logit_divergence": "the output logits' log Z drifting",
    "grad_spike": "a gradient-norm spike",
}
_REMEDIES = {
    "attention_logit_growth": ("qk_layernorm", "lower_lr", "warmup", "clip_grad_norm"),
    "output_logit_divergence": ("z_loss", "lower_lr", "warmup"),
    "grad_spike": ("clip_grad_norm", "lower_lr", "warmup"),
}


def precursors(view: RunView, spike_step: int) -> list[Onset]:
    """The precursors seen at or before ``spike_step``, earliest first."""
    found = [o for o in (attention_onset(view), logit_onset(view)) if o is not None]
    found = [o for o in found if o.step <= spike_step]
    recorded = [int(s) for s in view.loss.index]
    lo = recorded[max(0, recorded.index(spike_step) - GRAD_LOOKBACK)] \
        if spike_step in recorded else spike_step
    near = [g for g in grad_spikes(view) if lo <= g[0] <= spike_step]
    if near:
        step, g, med = near[0]
        found.append(Onset("grad_spike", step, leading_layers(view, step), [step],
                           {"grad_norm_total": g, "baseline": med}))
    return sorted(found, key=lambda o: o.step)


def rule(view: RunView) -> list[Finding]:
    """Report the first loss spike, its precursors and the lead time."""
    spikes = loss_spikes(view)
    if not spikes:
        return []
    sp = spikes[0]
    found = precursors(view, sp.step)
    recovery = (
        f", back within the band by step {sp.recovered}" if sp.recovered is not None
        else ", and it has not come back"
    )
    head = (
        f"The loss spiked at step {sp.step}: {number(sp.loss)} against a baseline of "
        f"{number(sp.baseline)} (median of the {WINDOW} recorded steps before){recovery}"
    )
    more = f"; {len(spikes) - 1} more spike{'s' if len(spikes) > 2 else ''} followed" \
        if len(spikes) > 1 else ""
    if found:
        first = found[0]
        lead = sp.step - first.step
        where = f" in {names(first.layers)}" if first.layers and first.layers != [""] else ""
        also = [_WHAT[o.kind] for o in found[1:]]
        then = f" (then {', '.join(also)})" if also else ""
        remedies = _REMEDIES[first.kind]
        body = (
            f". The first precursor, {_WHAT[first.kind]}{where}, came at step {first.step}: "
            f"a lead time of {lead} step{'s' if lead != 1 else ''}{then}{more}; "
            f"{advice(remedies)}."
        )
        layers = tuple(ly for ly in first.layers if ly)
    else:
        lead = 0
        remedies = ("clip_grad_norm", "lower_lr", "warmup")
        body = (f". No precursor was recorded before it (lead time 0){more}; "
                f"{advice(remedies)}.")
        layers = ()
    evidence = {
        "spike_step": sp.step,
        "loss": num(sp.loss),
        "baseline": num(sp.baseline),
        "band": num(sp.band),
        "recovered_step": sp.recovered,
        "spikes": [s.step for s in spikes],
        "first_precursor": found[0].kind if found else None,
        "first_precursor_step": found[0].step if found else None,
        "precursors": {o.kind: o.step for o in found},
        "growth_began_in": list(layers),
        "lead_time": lead,
        "window": WINDOW,
    }
    end = sp.recovered if sp.recovered is not None else int(view.loss.index.max())
    evidence["loss_at_end"] = num(end_level(view))
    if sp.recovered is None:
        severity = "error"
    elif not lasting(view, sp):
        severity = "info"  # back for good: the spike did not stop the run
    else:
        severity = "warning"
    return [
        Finding(
            "loss_spike",
            layers,
            step_span(view, [found[0].step if found else sp.step, end]),
            severity,  # type: ignore[arg-type]
            head + body,
            evidence,
            remedies,
        )
    ]
