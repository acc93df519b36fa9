"""The instability rules on runs built from chosen numbers: thresholds, lead times, causality.

loss_spike, attention_logit_growth, output_logit_divergence, grad_spike and adam_epsilon each
fire where their condition holds and stay silent just below it; the lead time they report is
the distance from the precursor's onset to the loss spike; and a rule that fires at step s
fires on the run truncated at s (it looks only at the past).
"""

from __future__ import annotations

import numpy as np
import pytest

from gradwatch.diagnose import diagnose
from gradwatch.diagnose._precursors import (
    ATTN_LOGIT_HIGH,
    GRAD_SPIKE,
    LSE_DRIFT,
    SPIKE_REL,
    loss_spikes,
)
from gradwatch.diagnose._view import RunView
from gradwatch.store.reader import Run
from gradwatch.verdicts import verdict

from .synthetic import make_run

STEPS = 200
DETAIL = 10


def noisy_loss(seed=0, level=1.5, noise=0.05, steps=STEPS, start=4.0, fall=30):
    """A loss that falls from ``start`` to ``level`` over ``fall`` steps, then stays, noisy."""
    rng = np.random.default_rng(seed)
    t = np.arange(steps)
    curve = level + (start - level) * np.exp(-t / (fall / 4))
    return curve + noise * rng.standard_normal(steps)


def run_with(loss, attn=None, lse=None, grads=None, eps=None, rms=None, n_layers=3):
    """A run of ``n_layers`` layers: loss every step, detail statistics every DETAIL steps."""
    steps = len(loss)
    stats = {"grad_norm": grads if grads is not None else np.ones((steps, n_layers))}
    detail = np.full((steps, n_layers), np.nan)

    def at_detail(arr):
        out = detail.copy()
        out[::DETAIL] = np.asarray(arr, dtype=float)[::DETAIL]
        return out

    if attn is not None:
        stats["attn_logit_max"] = at_detail(attn)
        stats["attn_entropy_min"] = at_detail(np.full((steps, n_layers), 1.0))
    if eps is not None:
        stats["eps_frac"] = at_detail(eps)
        stats["update_rms"] = at_detail(rms if rms is not None else 1 - np.asarray(eps))
    extra = []
    if lse is not None:
        extra = [(s, "", "logsumexp_mean", float(lse[s])) for s in range(0, steps, DETAIL)]
    return make_run(n_layers, stats, loss=list(loss), extra=extra,
                    structure={"attention": True})


def truncated(run: Run, step: int) -> Run:
    return Run(meta=run.meta, stats=run.stats[run.stats["step"] <= step], path=None)


def kinds(findings, severities=("warning", "error")):
    return {f.kind: f for f in findings if f.severity in severities}


def growing_logits(onset=90, layer=1, n_layers=3, steps=STEPS, rate=1.08):
    """Attention logits near 5 everywhere; in ``layer`` they grow from ``onset - 40`` on."""
    a = np.full((steps, n_layers), 5.0)
    t = np.arange(steps)
    grow = 5.0 * rate ** np.clip(t - (onset - 40), 0, None)
    a[:, layer] = grow
    return a


# -- loss_spike ---------------------------------------------------------------------------------

def test_a_stationary_noisy_loss_has_no_spike():
    for seed in range(5):
        run = run_with(noisy_loss(seed, noise=0.08, steps=600))
        assert not loss_spikes(RunView(run)), seed
        assert not kinds(diagnose(run))


def test_spike_on_the_robust_baseline_named_with_recovery():
    loss = noisy_loss(1)
    loss[150:155] = 2.6  # 1.5 -> 2.6: 73% above the baseline, far outside the noise
    found = diagnose(run_with(loss))
    f = next(f for f in found if f.kind == "loss_spike")
    assert f.evidence["spike_step"] == 150 and f.evidence["recovered_step"] == 155
    assert f.evidence["baseline"] == pytest.approx(1.5, abs=0.05)
    assert f.evidence["lead_time"] == 0
    assert "step 150" in f.message and "lead time 0" in f.message
    # back for good: a note, not a verdict
    assert f.severity == "info" and verdict(found) == "healthy"
    # back within the band, but the run ends above where it was: a warning
    worse = loss.copy()
    worse[180:] = 1.5 * 1.4
    f = kinds(diagnose(run_with(worse)))["loss_spike"]
    assert f.severity == "warning" and verdict(diagnose(run_with(worse))) == "exploding"
    # just inside the band (noise 0.05 -> 6 sigma = 0.3, 30% of 1.5 = 0.45): no spike
    low = noisy_loss(1)
    low[150] = 1.5 * (1 + SPIKE_REL) - 0.06
    assert not loss_spikes(RunView(run_with(low)))


def test_one_hard_batch_is_not_a_spike_and_a_non_finite_loss_confirms_one():
    loss = noisy_loss(4)
    loss[150] = 4.0  # one batch far above the band, the next back in it
    assert not loss_spikes(RunView(run_with(loss)))
    loss[151] = 3.0  # two in a row: a spike, named at its first step
    assert [s.step for s in loss_spikes(RunView(run_with(loss)))] == [150]
    loss[151] = np.nan  # the loss then turns non-finite: a spike too
    assert [s.step for s in loss_spikes(RunView(run_with(loss)))] == [150]


def test_a_grad_spike_before_a_loss_spike_the_run_came_back_from_is_a_note():
    rng = np.random.default_rng(7)
    grads = 1 + 0.05 * rng.standard_normal((STEPS, 3))
    grads[120, 2] = 3 * GRAD_SPIKE
    loss = noisy_loss(7)
    loss[124:127] = 3.0  # a short loss spike, then back to where the run was
    found = diagnose(run_with(loss, grads=grads))
    assert next(f for f in found if f.kind == "loss_spike").severity == "info"
    g = next(f for f in found if f.kind == "grad_spike")
    assert g.severity == "info" and g.evidence["lead_time"] == 4
    assert verdict(found) == "healthy"


def test_a_spike_that_stays_is_an_error():
    loss = noisy_loss(2)
    loss[170:] = 3.5
    f = kinds(diagnose(run_with(loss)))["loss_spike"]
    assert f.severity == "error" and f.evidence["recovered_step"] is None


def test_the_falling_start_of_a_run_is_not_a_spike():
    loss = noisy_loss(3, start=6.0, fall=80, noise=0.1)
    assert not loss_spikes(RunView(run_with(loss)))


# -- precursors and lead time ---------------------------------------------------------------------

def test_attention_growth_names_the_layer_and_the_lead_time():
    loss = noisy_loss(4)
    loss[160:] = 3.0
    attn = growing_logits(onset=90, layer=1)
    attn[:, 2] = growing_logits(onset=120, layer=2, rate=1.08)[:, 2]
    findings = diagnose(run_with(loss, attn=attn))
    got = kinds(findings)
    a = got["attention_logit_growth"]
    onset = a.evidence["onset_step"]
    expect = next(s for s in range(0, STEPS, DETAIL) if attn[s, 1] > ATTN_LOGIT_HIGH)
    assert onset == expect and a.layers == ("l1", "l2")
    assert a.evidence["lead_time"] == 160 - onset and a.severity == "error"
    assert f"{160 - onset} steps before the loss spike at step 160" in a.message
    s = got["loss_spike"]
    assert s.evidence["first_precursor"] == "attention_logit_growth"
    assert s.evidence["first_precursor_step"] == onset
    assert s.evidence["growth_began_in"] == ["l1", "l2"]
    assert s.evidence["lead_time"] == 160 - onset
    assert f"a lead time of {160 - onset} steps" in s.message
    assert "qk_layernorm" in s.remedies and s.remedies == a.remedies


def test_attention_growth_warns_before_any_spike_and_not_below_threshold():
    attn = growing_logits(onset=90, layer=0)
    f = kinds(diagnose(run_with(noisy_loss(5), attn=attn)))["attention_logit_growth"]
    assert f.severity == "warning" and f.evidence["lead_time"] is None
    assert "no loss spike has followed" in f.message
    # logits that grow to just under the threshold, or that start large and stay: nothing
    capped = np.minimum(attn, ATTN_LOGIT_HIGH - 1)
    assert "attention_logit_growth" not in kinds(diagnose(run_with(noisy_loss(5), attn=capped)))
    big = np.full((STEPS, 3), 3 * ATTN_LOGIT_HIGH)
    assert "attention_logit_growth" not in kinds(diagnose(run_with(noisy_loss(5), attn=big)))


def test_output_logit_divergence():
    lse = np.full(STEPS, 4.2)
    lse[100:] = 4.2 + np.linspace(0, 30, STEPS - 100)
    loss = noisy_loss(6)
    loss[180:] = 4.0
    f = kinds(diagnose(run_with(loss, lse=lse)))["output_logit_divergence"]
    onset = next(s for s in range(0, STEPS, DETAIL) if abs(lse[s] - 4.2) > LSE_DRIFT)
    assert f.evidence["onset_step"] == onset and f.evidence["lead_time"] == 180 - onset
    assert f.remedies[0] == "z_loss"
    ok = np.full(STEPS, 4.2) + np.linspace(0, LSE_DRIFT - 1, STEPS)
    assert "output_logit_divergence" not in kinds(diagnose(run_with(noisy_loss(6), lse=ok)))


def test_log_z_drifting_while_the_loss_falls_is_a_note_and_while_it_stalls_a_warning():
    lse = np.full(STEPS, 4.2)
    lse[100:] = 4.2 + np.linspace(0, 30, STEPS - 100)
    learning = diagnose(run_with(noisy_loss(6), lse=lse))  # 4.0 -> 1.5: a confident classifier
    f = next(f for f in learning if f.kind == "output_logit_divergence")
    assert f.severity == "info" and verdict(learning) == "healthy"
    stalled = diagnose(run_with(noisy_loss(6, start=1.6), lse=lse))
    assert kinds(stalled)["output_logit_divergence"].severity == "warning"


def test_spikes_of_a_converged_run_must_be_material():
    # a loss near 0 that doubles for a while: no spike (5% of the loss the run began at)
    loss = noisy_loss(10, level=0.02, noise=0.001, start=2.0)
    loss[150:160] = 0.05
    assert not loss_spikes(RunView(run_with(loss)))
    loss[150:160] = 0.02 + 0.06 * 2.0
    assert [s.step for s in loss_spikes(RunView(run_with(loss)))] == [150]
    # gradients fallen 20x since the start that jump 4x: below half the first norm, no spike
    rng = np.random.default_rng(11)
    grads = np.concatenate([np.full((20, 3), 1.0), np.full((STEPS - 20, 3), 0.05)])
    grads *= 1 + 0.05 * rng.standard_normal((STEPS, 3))
    grads[120] = 0.25
    assert not [f for f in diagnose(run_with(noisy_loss(7), grads=grads))
                if f.kind == "grad_spike"]
    grads[120] = 0.6
    assert [f for f in diagnose(run_with(noisy_loss(7), grads=grads)) if f.kind == "grad_spike"]


def test_grad_spike_alone_is_a_note_and_before_a_loss_spike_a_warning():
    rng = np.random.default_rng(7)
    grads = 1 + 0.05 * rng.standard_normal((STEPS, 3))
    grads[120, 2] = 3 * GRAD_SPIKE  # the total norm jumps above GRAD_SPIKE x its median
    alone = diagnose(run_with(noisy_loss(7), grads=grads))
    f = next(f for f in alone if f.kind == "grad_spike")
    assert f.severity == "info" and f.evidence["step"] == 120 and f.layers[0] == "l2"
    assert verdict(alone) == "healthy"
    loss = noisy_loss(7)
    loss[124:] = 3.0
    f = kinds(diagnose(run_with(loss, grads=grads)))["grad_spike"]
    assert f.evidence["lead_time"] == 4 and "4 steps before the loss spike" in f.message
    below = 1 + 0.05 * rng.standard_normal((STEPS, 3))
    below[120, 2] = 0.9 * GRAD_SPIKE
    assert not [f for f in diagnose(run_with(noisy_loss(7), grads=below))
                if f.kind == "grad_spike"]


def test_adam_epsilon():
    eps = np.full((STEPS, 3), 0.05)
    eps[:, 0] = 0.8
    f = kinds(diagnose(run_with(noisy_loss(8), eps=eps, rms=np.full((STEPS, 3), 0.2))))
    f = f["adam_epsilon"]
    assert f.layers == ("l0",) and f.remedies == ("adam_eps",)
    assert "80%" in f.message and "0.2" in f.message
    eps[:, 0] = 0.45
    assert "adam_epsilon" not in kinds(diagnose(run_with(noisy_loss(8), eps=eps)))


# -- causality: the warning at step s is there on the run truncated at s --------------------------

@pytest.mark.parametrize("onset", [70, 110])
def test_rules_look_only_at_the_past(onset):
    loss = noisy_loss(9)
    loss[onset + 50 :] = 3.0
    run = run_with(loss, attn=growing_logits(onset=onset, layer=1))
    full = kinds(diagnose(run))
    first = full["attention_logit_growth"].evidence["onset_step"]
    assert "attention_logit_growth" in kinds(diagnose(truncated(run, first)))
    assert not kinds(diagnose(truncated(run, first - 1)))
    spike = full["loss_spike"].evidence["spike_step"]
    # the next recorded loss confirms a spike: named at its step, known one step later
    assert "loss_spike" not in kinds(diagnose(truncated(run, spike)))
    again = kinds(diagnose(truncated(run, spike + 1)))["loss_spike"]
    assert again.evidence["spike_step"] == spike
    assert again.evidence["lead_time"] == full["loss_spike"].evidence["lead_time"]
