"""Rule ``attention_logit_growth``: attention logits that grow without bound.

In a transformer trained at too high a learning rate the logits q·kᵀ/√d of some attention
layer grow by orders of magnitude, its softmax collapses onto one key per query (attention
entropy near 0) and the loss spikes or diverges some steps later; LayerNorm on the queries
and keys (qk-layernorm) prevents it (Dehghani et al. 2023, "Scaling Vision Transformers to 22
Billion Parameters"; Wortsman et al. 2023, "Small-scale proxies for large-scale Transformer
training instabilities", §3.1). The rule reads ``attn_logit_max`` (detail steps) and fires
when a layer's largest logit passes :data:`~gradwatch.diagnose._precursors.ATTN_LOGIT_HIGH`
and :data:`~gradwatch.diagnose._precursors.ATTN_GROWTH` times its early value. It names the
layer where the growth began (the first to cross), and gives the lead time to the loss spike
that followed, if one did. Its finding counts toward the verdict "exploding"; severity
"error" when a loss spike followed, "warning" while none has.
"""

from __future__ import annotations

from gradwatch.diagnose._advice import advice
from gradwatch.diagnose._precursors import attention_onset, lasting, lead_phrase
from gradwatch.diagnose._view import RunView, names, num, step_span
from gradwatch.findings import Finding
from gradwatch.wording import number, times

REMEDIES = ("qk_layernorm", "lower_lr", "warmup", "clip_grad_norm")


def rule(view: RunView) -> list[Finding]:
    """Report attention logits that grew past the threshold, and where it began."""
    onset = attention_onset(view)
    if onset is None:
        return []
    ev = onset.evidence
    first = onset.layers[0]
    a, a0 = ev["attn_logit_max"][first], ev["attn_logit_max_early"][first]
    top = ev["attn_logit_max_largest"][first]
    phrase, lead, spike = lead_phrase(view, onset.step)
    e0, e1 = ev["attn_entropy_min_early"][first], ev["attn_entropy_min_at_onset"][first]
    entropy = (
        f"; its smallest head entropy fell from {number(e0)} to {number(e1)} nats"
        if e0 == e0 and e1 == e1 and e1 < e0 else ""
    )
    others = onset.layers[1:]
    then = f"; then {names(others)}" if others else ""
    message = (
        f"Attention logits grow without bound: in '{first}' the largest q·kᵀ/√d went from "
        f"{number(a0)} early in the run to {number(a)} at step {onset.step} "
        f"({times(a / a0) if a0 > 0 else 'from 0'}; {number(top)} at most){entropy}{then}. "
        f"Warned {phrase}; {advice(REMEDIES)}."
    )
    evidence = {
        **{k: ({ly: num(x) for ly, x in v.items()} if isinstance(v, dict) else num(v))
           for k, v in ev.items()},
        "onset_step": onset.step,
        "onset_steps": dict(zip(onset.layers, onset.steps, strict=True)),
        "lead_time": lead,
        "spike_step": spike.step if spike is not None else None,
    }
    last = max(onset.steps)
    return [
        Finding(
            "attention_logit_growth",
            tuple(onset.layers),
            step_span(view, [onset.step, max(last, spike.step if spike else last)]),
            "error" if spike is not None and (lead or 0) >= 0 and lasting(view, spike)
            else "warning",
            message,
            evidence,
            REMEDIES,
        )
    ]
