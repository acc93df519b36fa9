"""Rule ``temporal``: the gradient through time of a recurrent layer vanishes or explodes.

For ``x_t = W_rec σ(x_{t-1}) + W_in u_t + b`` the gradient reaching time step t from the end of
the sequence is a product of T - t Jacobians: with σ_max(W_rec) < 1/γ (γ bounding |σ'|) the
long-term terms shrink geometrically, and above it they may grow (Pascanu, Mikolov & Bengio
2013; Bengio et al. 1994; Hochreiter 1991). A one-batch checkup measures ‖∂L/∂x_t‖ over t at
the input of each nn.RNN/LSTM/GRU layer (``Checkup.temporal``); this rule reads the ratio of
the first time step's to the last one's; a training run recorded by ``gw.watch`` holds the same
two norms as ``time_grad_first`` / ``time_grad_last`` (detail steps), read at the end of the
run. A ratio of exactly 0 is a signal that underflowed on its way back: vanished, not
missing. It is kind "vanishing" or "exploding" with
``evidence["through"] == "time"``; the thresholds are :mod:`gradwatch.verdicts`'.

A gated layer (nn.LSTM, nn.GRU) that vanishes through time at initialisation is a note
(info), not a verdict: its forget (update) gate is a parameter that training opens, which a
vanilla RNN's W_rec cannot do without exploding (Hochreiter & Schmidhuber 1997; Gers et al.
2000: the gate is learnt; an LSTM at its default init solves the adding problem); a gated
layer of a training run is not judged here.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from gradwatch.diagnose._advice import advice, recurrent_remedies
from gradwatch.diagnose._view import RunView
from gradwatch.findings import Finding
from gradwatch.jsonable import json_number
from gradwatch.verdicts import (
    TEMPORAL_EXPLODING,
    TEMPORAL_VANISHING_ERROR,
    TEMPORAL_VANISHING_WARNING,
)
from gradwatch.wording import number, times

GATED = ("LSTM", "GRU", "LSTMCell", "GRUCell")
"""Recurrent module types whose carry through time is gated by learnt parameters."""

TEMPORAL_MIN_STEPS = 5
"""Sequences shorter than this say little about long-range gradient flow: not judged."""

TEMPORAL_RUN_TAIL = 0.2
"""A training run's temporal flow is the median ratio over this last fraction of its detail
steps that recorded it (at least one)."""


def rule(view: RunView) -> list[Finding]:
    """Judge the temporal gradient flow measured for each recurrent layer.

    A checkup's measurement (``meta["checkup"]["temporal"]``) is read first; a training run's
    ``time_grad_first`` / ``time_grad_last`` / ``time_steps`` (recorded at detail steps) are
    read for the other layers, at the end of the run (see :func:`run_flows`).
    """
    flows = dict(view.checkup.get("temporal") or {})
    from_run = {} if view.is_checkup else run_flows(view)
    out = []
    remedies = recurrent_remedies(view)
    kinds = view.structure.get("recurrent_layers") or {}
    for layer, info in [*flows.items(), *((k, v) for k, v in from_run.items() if k not in flows)]:
        rtype = str((kinds.get(layer) or {}).get("type", "")) or view.layer_type(layer)
        gated = rtype in GATED
        training = layer not in flows
        if gated and training:
            continue  # its gates are learnt: a training run's gated layer is not judged here
        finding = _judge(layer, info, gated, remedies, training)
        if finding is not None:
            out.append(finding)
    return out


def run_flows(view: RunView) -> dict[str, dict[str, float | int]]:
    """A training run's temporal flow per recurrent layer, as it stands at the end of the run.

    The ratio ``time_grad_first / time_grad_last`` is taken at every detail step that recorded
    both (a first step whose gradient underflowed to 0 gives 0; a last step's 0 gives no
    ratio), and its median over the last :data:`TEMPORAL_RUN_TAIL` of those steps (at least
    one) is the run's: a gradient through time that has vanished at the end of training is
    reported, one that vanished only at the start is not.
    """
    first, last = view.wide("time_grad_first"), view.wide("time_grad_last")
    steps = view.wide("time_steps")
    out: dict[str, dict[str, float | int]] = {}
    for layer in first.columns:
        if layer not in last.columns or layer not in steps.columns:
            continue
        f = first[layer].astype(float)
        g = last[layer].reindex(f.index).astype(float)
        ok = f.notna() & g.notna() & (g > 0) & (f >= 0)
        if not ok.any():
            continue
        ratio = (f[ok] / g[ok]).to_numpy()
        tail = ratio[-max(1, int(math.ceil(len(ratio) * TEMPORAL_RUN_TAIL))):]
        n = steps[layer].reindex(f.index)[ok].iloc[-1]
        out[layer] = {"first_over_last": float(np.median(tail)), "steps": int(n)}
    return out


def _judge(
    layer: str, info: dict[str, Any], gated: bool, remedies: tuple[str, ...], training: bool
) -> Finding | None:
    """The finding for one layer's first/last ratio over ``steps`` time steps, or None."""
    ratio, steps = info.get("first_over_last"), int(info.get("steps", 0))
    if ratio is None or steps < TEMPORAL_MIN_STEPS:
        return None
    ratio = float(ratio)
    if math.isnan(ratio) or ratio < 0:
        return None
    per_step = ratio ** (1 / max(steps - 1, 1)) if math.isfinite(ratio) else math.inf
    evidence = {
        "through": "time",
        "first_over_last": json_number(ratio),
        "time_steps": steps,
        "per_step_factor": json_number(per_step),
        "underflow": ratio == 0,
        "measured": "training run" if training else "checkup",
    }
    if ratio < TEMPORAL_VANISHING_WARNING:
        severe = ratio < TEMPORAL_VANISHING_ERROR
        got = (
            "nothing of the last one's (it underflows to 0 on its way back)"
            if ratio == 0
            else f"{times(ratio)} of the last one's ({number(per_step)} per step)"
        )
        when = " at the end of the training run" if training else ""
        message = (
            f"The gradient through time of recurrent layer '{layer}' vanishes{when}: the "
            f"first of {steps} time steps gets {got}, so dependencies that long "
            f"cannot be learned; {advice(remedies)}."
        )
        if gated:
            message = (
                f"At initialisation the gradient through time of gated layer '{layer}' "
                f"fades: the first of {steps} time steps gets {got}; its gates are learnt "
                f"open in training, and to start them open, {advice(remedies, 1)}."
            )
        return Finding(
            kind="vanishing",
            layers=(layer,),
            steps=None,
            severity="info" if gated else "error" if severe else "warning",
            message=message,
            evidence=evidence,
            remedies=remedies,
        )
    if ratio > TEMPORAL_EXPLODING:
        return Finding(
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
        )
    return None
