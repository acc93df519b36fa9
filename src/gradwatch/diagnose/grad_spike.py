"""Rule ``grad_spike``: the total gradient norm jumps to several times its recent level.

In BLOOM-176B's training chronicles the global gradient norm rose 3.9× four steps before a
loss spike; Megatron-LM guards against a gradient norm 10× its running maximum. The rule
compares the total gradient norm (over every layer, every recorded step) with the median of
the :data:`~gradwatch.diagnose._precursors.WINDOW` recorded steps before it and fires at
:data:`~gradwatch.diagnose._precursors.GRAD_SPIKE` times that median, naming the layers whose
gradients grew most and the lead time to the loss spike that followed. A single spike the
loss does not follow is a note (severity "info"): minibatches sometimes hold one hard
example, and near convergence the norm is noisy (a deep ReLU MLP, an LSTM and a GRU that
trained well showed several). One a lasting loss spike follows (one the run has not come
back from for good) is a warning, counting toward the verdict "exploding".
"""

from __future__ import annotations

from gradwatch.diagnose._advice import advice
from gradwatch.diagnose._precursors import grad_spikes, lasting, lead_phrase, leading_layers
from gradwatch.diagnose._view import RunView, names, num, step_span
from gradwatch.findings import Finding
from gradwatch.wording import times

REMEDIES = ("clip_grad_norm", "lower_lr", "warmup")

def rule(view: RunView) -> list[Finding]:
    """Report gradient-norm spikes against the trailing median."""
    spikes = grad_spikes(view)
    if not spikes:
        return []
    step, g, med = spikes[0]
    layers = leading_layers(view, step)
    phrase, lead, spike = lead_phrase(view, step)
    # a loss spike the run came back from for good does not make a hard batch a warning
    followed = spike is not None and (lead or 0) >= 0 and lasting(view, spike)
    severity = "warning" if followed else "info"
    n = len(spikes)
    count = f" ({n} spikes in the run)" if n > 1 else ""
    message = (
        f"The total gradient norm jumped to {times(g / med)} its recent median at step {step}"
        f"{count}, led by {names(layers[:2]) or 'all layers'}. Warned {phrase}; "
        f"{advice(REMEDIES)}."
    )
    evidence = {
        "step": step,
        "grad_norm_total": num(g),
        "baseline": num(med),
        "ratio": num(g / med),
        "spike_steps": [s for s, _, _ in spikes],
        "leading_layers": layers,
        "lead_time": lead,
        "loss_spike_step": spike.step if spike is not None else None,
    }
    return [
        Finding("grad_spike", tuple(layers), step_span(view, [step, spikes[-1][0]]),
                severity, message, evidence, REMEDIES)
    ]
