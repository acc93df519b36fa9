"""Rule ``temporal``: the gradient through time of a recurrent layer vanishes or explodes.

For ``x_t = W_rec σ(x_{t-1}) + W_in u_t + b`` the gradient reaching time step t from the end of
the sequence is a product of T - t Jacobians: with σ_max(W_rec) < 1/γ (γ bounding |σ'|) the
long-term terms shrink geometrically, and above it they may grow (Pascanu, Mikolov & Bengio
2013; Bengio et al. 1994; Hochreiter 1991). A one-batch checkup measures ‖∂L/∂x_t‖ over t at
the input of each nn.RNN/LSTM/GRU layer (``Checkup.temporal``); this rule reads the ratio of
the first time step's to the last one's. A ratio of exactly 0 is a signal that underflowed on
its way back: vanished, not missing. It is kind "vanishing" or "exploding" with
``evidence["through"] == "time"``; the thresholds are :mod:`gradwatch.verdicts`'.
"""

from __future__ import annotations

import math

from gradwatch.diagnose._advice import advice, recurrent_remedies
from gradwatch.diagnose._view import RunView
from gradwatch.findings import Finding
from gradwatch.verdicts import (
    TEMPORAL_EXPLODING,
    TEMPORAL_VANISHING_ERROR,
    TEMPORAL_VANISHING_WARNING,
)
from gradwatch.wording import number, times

TEMPORAL_MIN_STEPS = 5
"""Sequences shorter than this say little about long-range gradient flow: not judged."""


def rule(view: RunView) -> list[Finding]:
    """Judge the temporal gradient flow a checkup measured for each recurrent layer."""
    flows = view.checkup.get("temporal") or {}
    out = []
    remedies = recurrent_remedies(view)
    for layer, info in flows.items():
        ratio, steps = info.get("first_over_last"), int(info.get("steps", 0))
        if ratio is None or steps < TEMPORAL_MIN_STEPS:
            continue
        ratio = float(ratio)
        if math.isnan(ratio) or ratio < 0:
            continue
        per_step = ratio ** (1 / max(steps - 1, 1)) if math.isfinite(ratio) else math.inf
        evidence = {
            "through": "time",
            "first_over_last": ratio if math.isfinite(ratio) else "inf",
            "time_steps": steps,
            "per_step_factor": per_step if math.isfinite(per_step) else "inf",
            "underflow": ratio == 0,
        }
        if ratio < TEMPORAL_VANISHING_WARNING:
            severe = ratio < TEMPORAL_VANISHING_ERROR
            got = (
                "nothing of the last one's (it underflows to 0 on its way back)"
                if ratio == 0
                else f"{times(ratio)} of the last one's ({number(per_step)} per step)"
            )
            out.append(Finding(
                kind="vanishing",
                layers=(layer,),
                steps=None,
                severity="error" if severe else "warning",
                message=(
                    f"The gradient through time of recurrent layer '{layer}' vanishes: the "
                    f"first of {steps} time steps gets {got}, so dependencies that long "
                    f"cannot be learned; {advice(remedies)}."
                ),
                evidence=evidence,
                remedies=remedies,
            ))
        elif ratio > TEMPORAL_EXPLODING:
            out.append(Finding(
                kind="exploding",
                layers=(layer,),
                steps=None,
                severity="error",
                message=(
                    f"The gradient through time of recurrent layer '{layer}' explodes: the "
                    f"first of {steps} time steps gets {times(ratio)} the last one's; clip the "
                    "gradient norm and shrink the recurrent weights (orthogonal init)."
                ),
                evidence=evidence,
                remedies=("clip_grad_norm", *[r for r in remedies if r != "clip_grad_norm"]),
            ))
    return out
