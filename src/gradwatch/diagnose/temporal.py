"""Rule ``temporal``: the gradient through time of a recurrent layer vanishes or explodes.

For ``x_t = W_rec σ(x_{t-1}) + W_in u_t + b`` the gradient reaching time step t from the end of
the sequence is a product of T - t Jacobians: with σ_max(W_rec) < 1/γ (γ bounding |σ'|) the
long-term terms shrink geometrically, and above it they may grow (Pascanu, Mikolov & Bengio
2013; Bengio et al. 1994; Hochreiter 1991). A one-batch checkup measures ‖∂L/∂x_t‖ over t at
the input of each nn.RNN/LSTM/GRU layer (``Checkup.temporal``); this rule reads the ratio of
the first time step's to the last one's. It is kind "vanishing" or "exploding" with
``evidence["through"] == "time"``.
"""

from __future__ import annotations

import math

from gradwatch.diagnose._view import RunView
from gradwatch.findings import Finding

TEMPORAL_VANISHING_ERROR = 1e-4
"""‖∂L/∂x_first‖ / ‖∂L/∂x_last‖ below this: the first inputs reach the loss with less than
1e-4 of the last one's gradient; nothing learns a dependency that long (error)."""

TEMPORAL_VANISHING_WARNING = 1e-2
"""...below this: long-range dependencies learn slowly (warning)."""

TEMPORAL_EXPLODING = 1e3
"""...above this: gradients grow back through time; expect spikes and NaN (error)."""

TEMPORAL_MIN_STEPS = 5
"""Sequences shorter than this say little about long-range gradient flow: not judged."""


def rule(view: RunView) -> list[Finding]:
    """Judge the temporal gradient flow a checkup measured for each recurrent layer."""
    flows = view.checkup.get("temporal") or {}
    out = []
    for layer, info in flows.items():
        ratio, steps = info.get("first_over_last"), int(info.get("steps", 0))
        if ratio is None or steps < TEMPORAL_MIN_STEPS or not math.isfinite(ratio) or ratio <= 0:
            continue
        evidence = {"through": "time", "first_over_last": ratio, "time_steps": steps,
                    "per_step_factor": ratio ** (1 / max(steps - 1, 1))}
        if ratio < TEMPORAL_VANISHING_WARNING:
            severe = ratio < TEMPORAL_VANISHING_ERROR
            out.append(Finding(
                kind="vanishing",
                layers=(layer,),
                steps=None,
                severity="error" if severe else "warning",
                message=(
                    f"The gradient through time of recurrent layer '{layer}' vanishes: the "
                    f"first of {steps} time steps gets {ratio:.1e} of the last one's "
                    f"(x{evidence['per_step_factor']:.2f} per step), so long-range "
                    "dependencies cannot be learned; use an LSTM or GRU, or orthogonal "
                    "recurrent weights."
                ),
                evidence=evidence,
                remedies=("lstm_or_gru", "orthogonal"),
            ))
        elif ratio > TEMPORAL_EXPLODING:
            out.append(Finding(
                kind="exploding",
                layers=(layer,),
                steps=None,
                severity="error",
                message=(
                    f"The gradient through time of recurrent layer '{layer}' explodes: the "
                    f"first of {steps} time steps gets {ratio:.1e} times the last one's; "
                    "clip the gradient norm and shrink the recurrent weights (orthogonal init)."
                ),
                evidence=evidence,
                remedies=("clip_grad_norm", "orthogonal", "lstm_or_gru"),
            ))
    return out
