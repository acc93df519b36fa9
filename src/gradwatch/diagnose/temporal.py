"""Rule ``temporal``: the gradient through time vanishes or explodes.

For ``x_t = W_rec σ(x_{t-1}) + W_in u_t + b`` the gradient reaching time step t from the end of
the sequence is a product of T - t Jacobians: with σ_max(W_rec) < 1/γ (γ bounding |σ'|) the
long-term terms shrink geometrically, and above it they may grow (Pascanu, Mikolov & Bengio
2013; Bengio et al. 1994; Hochreiter 1991). Whatever the cell (a vanilla RNN, a gated LSTM or
GRU, a linear state-space recurrence written as a loop, ...) the flow is measured where the
signal enters, ``‖∂L/∂x_t‖`` over the time steps t (:class:`gradwatch.probes.TemporalProbe`):

- a **checkup** measures it at the model's input when it has a time axis (layer
  ``"(input)"``) and at the input of each nn.RNN/LSTM/GRU, and keeps the ratio of the first
  step's to the last step's (``meta["checkup"]["temporal"]``);
- a **training run** recorded by ``gw.watch`` keeps the same two norms at every detail step,
  ``time_grad_first`` / ``time_grad_last`` (and ``time_steps``), for each recurrent layer
  and, under the run-level layer ``""``, for a floating ``(N, T, F)`` model input; the rule
  reads their ratio at the end of the run (the median over the last
  :data:`TEMPORAL_RUN_TAIL` of the detail steps that recorded it).

A ratio of 0 is a signal that underflowed on its way back: vanished, not missing. The
thresholds are :mod:`gradwatch.verdicts`' and the same for every cell, with one difference
that is measured, not assumed: a **gated** carry (nn.LSTM, nn.GRU) that fades at
initialisation is learnt open in training as long as enough gradient arrives from the far
steps (Hochreiter & Schmidhuber 1997; Gers et al. 2000: an LSTM at its default init solves
the adding problem over 50 steps although its carry starts at σ(0) = 1/2 per step), so at a
checkup it is an error when the far steps' gradient has underflowed to 0 or lies below the
floor where training no longer opens a gate
(:data:`~gradwatch.verdicts.TEMPORAL_GATED_VANISHED`), and a note otherwise. After training,
gated or not, a flow is judged by what training did to it: a gated flow below the floor is
an error, a fading one that has not grown :data:`GATE_OPENING`-fold since the first
recorded step a warning (its gates have not opened), one that has a note; an ungated flow as
at a checkup (a loss that fell says nothing here: the adding problem's loss falls to chance
by learning the mean). The finding is kind "vanishing" or "exploding" with
``evidence["through"] == "time"``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from gradwatch.diagnose._advice import GATED, advice, recurrent_remedies
from gradwatch.diagnose._view import RunView
from gradwatch.findings import Finding
from gradwatch.jsonable import json_number
from gradwatch.probes import INPUT
from gradwatch.verdicts import (
    TEMPORAL_COMPOUNDING_FIT,
    TEMPORAL_EXPLODING,
    TEMPORAL_GATED_VANISHED,
    TEMPORAL_MIN_STEPS,
    TEMPORAL_REACH,
    TEMPORAL_VANISHING_ERROR,
    TEMPORAL_VANISHING_WARNING,
)
from gradwatch.wording import number, times

TEMPORAL_RUN_TAIL = 0.2
"""A training run's temporal flow is the median ratio over this last fraction of its detail
steps that recorded it (at least one)."""

GATE_OPENING = 10.0
"""A gated flow whose ratio at the end of a run is this many times its first recorded one is
being learnt open (a note); one that has not grown so far is a warning below
:data:`~gradwatch.verdicts.TEMPORAL_VANISHING_WARNING`."""


def _opened(info: dict[str, Any]) -> float | None:
    """End-of-run ratio over the first recorded one (inf from 0; None when not known)."""
    first, end = info.get("first_recorded"), info.get("first_over_last")
    if not isinstance(first, int | float) or not isinstance(end, int | float):
        return None
    if first <= 0:
        return math.inf if end > 0 else 1.0
    return float(end) / float(first)

def rule(view: RunView) -> list[Finding]:
    """Judge the temporal gradient flow measured at the input and at each recurrent layer.

    A checkup's measurement (``meta["checkup"]["temporal"]``) is read first; a training run's
    ``time_grad_first`` / ``time_grad_last`` / ``time_steps`` (recorded at detail steps) are
    read for the other places, at the end of the run (see :func:`run_flows`). When a
    recurrent layer's flow is judged, the model input's flow, which crosses the same
    recurrence, adds no second finding of the same kind.
    """
    flows = dict(view.checkup.get("temporal") or {})
    from_run = {} if view.is_checkup else run_flows(view)
    remedies = recurrent_remedies(view)
    kinds = view.structure.get("recurrent_layers") or {}
    found: dict[str, list[Finding]] = {}
    items = [*flows.items(), *((k, v) for k, v in from_run.items() if k not in flows)]
    for layer, info in items:
        rtype = str((kinds.get(layer) or {}).get("type", "")) or view.layer_type(layer)
        if layer == INPUT:  # gated when every recurrent layer of the model is
            types = {str(v.get("type")) for v in kinds.values()}
            gated = bool(types) and types <= set(GATED)
        else:
            gated = rtype in GATED
        training = layer not in flows
        finding = _judge(layer, info, gated, remedies, training)
        if finding is not None and layer == INPUT and not _recurrent(view, info):
            finding = _without_recurrence(finding, info, training)
        if finding is not None:
            found.setdefault(finding.kind, []).append(finding)
    out = []
    for same_kind in found.values():
        layers = [f for f in same_kind if f.evidence["measured_at"] != "model input"]
        out += layers or same_kind
    return out


def run_flows(view: RunView) -> dict[str, dict[str, float | int]]:
    """A training run's temporal flow per place, as it stands at the end of the run.

    The ratio ``time_grad_first / time_grad_last`` is taken at every detail step that recorded
    both (a first step whose gradient underflowed to 0 gives 0; a last step's 0 gives no
    ratio), and its median over the last :data:`TEMPORAL_RUN_TAIL` of those steps (at least
    one) is the run's: a gradient through time that has vanished at the end of training is
    reported, one that vanished only at the start is not. The first ratio recorded is kept
    as ``first_recorded``.
    """
    first, last, steps = (
        _with_input(view, stat) for stat in ("time_grad_first", "time_grad_last", "time_steps")
    )
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
        out[str(layer)] = {
            "first_over_last": float(np.median(tail)),
            "first_recorded": float(ratio[0]),
            "steps": int(n),
            "detail_steps": int(len(ratio)),
        }
    return out


def _with_input(view: RunView, stat: str) -> pd.DataFrame:
    """``view.wide(stat)`` with the model input's flow (run-level layer "") as :data:`INPUT`."""
    wide = view.wide(stat)
    df = view.run.stats
    df = df[(df["stat"] == stat) & (df["layer"] == "")]
    if df.empty:
        return wide
    col = df.drop_duplicates("step", keep="last").set_index("step")["value"].sort_index()
    wide = wide.reindex(index=wide.index.union(col.index))
    wide[INPUT] = col.reindex(wide.index)
    return wide


def _recurrent(view: RunView, info: dict[str, Any]) -> bool:
    """Whether the model has a recurrence.

    An nn.RNN/LSTM/GRU, or a layer whose weight the autograd graph shows read at (nearly)
    every one of the flow's time steps (a cell written as a loop).
    """
    if view.structure.get("recurrent_layers"):
        return True
    steps = int(info.get("steps", 0))
    reads = view.structure.get("reused_layers") or {}
    return any(int(n) >= max(steps - 1, 2) for n in reads.values())


def _finite(value: Any) -> float | None:
    if isinstance(value, int | float) and math.isfinite(value):
        return float(value)
    return None


def _without_recurrence(finding: Finding, info: dict[str, Any], training: bool) -> Finding:
    """A model input's vanishing flow, judged by reach where the model has no recurrence.

    Without a recurrence nothing multiplies a per-step factor into the gradient: ‖∂L/∂x_t‖
    is a sum over the paths from x_t to the loss, uneven over t by construction (dilated
    convolutions give each lag its own path), so the first step's share of the last says
    little. A checkup's profile decides instead (:data:`~gradwatch.verdicts.TEMPORAL_REACH`,
    :data:`~gradwatch.verdicts.TEMPORAL_COMPOUNDING_FIT`):

    - where a per-step factor does compound (a straight line explains ``ln ‖∂L/∂x_t‖``
      over the steps before the last), the flow is judged by the decay it compounds over
      the sequence (``compounded``), as a recurrence's: a decaying state computed without a
      loop (powers of λ, an FFT convolution) is a recurrence in all but name;
    - otherwise, where fewer than ``TEMPORAL_REACH`` of the steps get
      :data:`~gradwatch.verdicts.TEMPORAL_VANISHING_ERROR` of the largest step's gradient,
      it stays vanishing with the share it reaches (a recurrence remedy only where the
      steps reached are the last ones, as a decay leaves them);
    - and where more do, the gradient reaches the sequence: a note without remedies.

    A training run records only the two ends, which cannot tell a per-step factor that
    compounds from a last step with a more direct path to the loss: the warning band there
    is a note that says so; the error band stands.
    """
    ratio = float(info.get("first_over_last", 1.0))
    if finding.kind != "vanishing" or finding.severity == "info":
        return finding
    steps = int(info.get("steps", 0))
    share = f"the first of {steps} time steps gets {times(ratio)} of the last one's"
    if training:
        if ratio < TEMPORAL_VANISHING_ERROR:
            return finding
        return _note(finding, {**finding.evidence, "judged_on": "two ends only"}, (
            f"At the model input {share} at the end of the training run; a training run "
            "records only the first and the last step, which cannot tell a per-step factor "
            "that compounds from a last step with a more direct path to the loss, and the "
            "model has no recurrent layer: gw.check measures every step and judges it."))
    compounded, fit = _finite(info.get("compounded")), _finite(info.get("fit"))
    reach, back = _finite(info.get("reach")), _finite(info.get("reach_back"))
    if compounded is None:
        return finding
    evidence = {**finding.evidence, "judged_on": "profile",
                "compounded": json_number(compounded),
                "fit": json_number(fit) if fit is not None else None,
                "reach": json_number(reach) if reach is not None else None,
                "reach_back": json_number(back) if back is not None else None}
    fitted = (f"a straight line fitted to ln ‖∂L/∂x_t‖ over the {steps - 1} steps before the "
              f"last puts the first at {times(compounded)} of the last of them")
    if fit is None or reach is None:  # a checkup recorded before reach was measured
        if compounded < TEMPORAL_VANISHING_WARNING:
            return finding
        return _note(finding, evidence, (
            f"At the model input {share}, but the gradient does not compound along the "
            f"steps: {fitted}; every step gets gradient, and the last has a more direct "
            "path to the loss."))
    compounds = fit >= TEMPORAL_COMPOUNDING_FIT and compounded < TEMPORAL_VANISHING_WARNING
    reached = f"{round(reach * steps)} of the {steps} steps get"
    floor = number(TEMPORAL_VANISHING_ERROR)
    if compounds:
        severity = "error" if compounded < TEMPORAL_VANISHING_ERROR else "warning"
        return Finding(
            kind="vanishing", layers=finding.layers, steps=None,
            severity=severity,  # type: ignore[arg-type]
            message=(f"{finding.message} A per-step factor compounds: {fitted} (the line "
                     f"explains {fit:.0%} of the profile), and {reached} at least {floor} "
                     "of the largest step's gradient."),
            evidence=evidence, remedies=finding.remedies)
    if reach < TEMPORAL_REACH:
        tail = back is not None and reach >= 0.9 * back  # the steps reached are the last
        remedies = finding.remedies if tail else ()
        where = (f"the last {round(reach * steps)} steps only" if tail
                 else f"{round(reach * steps)} of the {steps} steps, scattered over them")
        return Finding(
            kind="vanishing", layers=finding.layers, steps=None,
            severity=finding.severity, evidence=evidence, remedies=remedies,
            message=(f"{finding.message} The gradient gets at least {floor} of the largest "
                     f"step's at {where}."))
    return _note(finding, evidence, (
        f"At the model input {share}, but the gradient reaches the sequence and does not "
        f"compound along it: {reached} at least {floor} of the largest step's gradient, "
        f"and {fitted}, a line that explains {fit:.0%} of the profile (a factor compounding "
        f"per step explains over {TEMPORAL_COMPOUNDING_FIT:.0%}). The model has no "
        "recurrence: the gradient at each step sums the paths from it to the loss, whose "
        "gains differ from step to step; every step gets gradient."))


def _note(finding: Finding, evidence: dict[str, Any], message: str) -> Finding:
    return Finding(kind="vanishing", layers=finding.layers, steps=None, severity="info",
                   message=message, evidence=evidence, remedies=())


def _where(layer: str, info: dict[str, Any]) -> str:
    if layer == INPUT:
        return str(info.get("measured_at") or "model input")
    return f"input of '{layer}'"


def _judge(
    layer: str,
    info: dict[str, Any],
    gated: bool,
    remedies: tuple[str, ...],
    training: bool,
) -> Finding | None:
    """The finding for one place's first/last ratio over ``steps`` time steps, or None."""
    ratio, steps = info.get("first_over_last"), int(info.get("steps", 0))
    if ratio is None or steps < TEMPORAL_MIN_STEPS:
        return None
    ratio = float(ratio)
    if math.isnan(ratio) or ratio < 0:
        return None
    per_step = ratio ** (1 / max(steps - 1, 1)) if math.isfinite(ratio) else math.inf
    where = "model input" if layer == INPUT else "recurrent layer"
    evidence = {
        "through": "time",
        "first_over_last": json_number(ratio),
        "time_steps": steps,
        "per_step_factor": json_number(per_step),
        "underflow": ratio == 0,
        "gated": gated,
        "measured": "training run" if training else "checkup",
        "measured_at": where,
        "where": _where(layer, info),
    }
    if training and "first_recorded" in info:
        evidence["first_recorded"] = json_number(float(info["first_recorded"]))
        evidence["detail_steps"] = int(info.get("detail_steps", 0))
    subject = (
        f"the gradient through time at the {evidence['where']}" if layer == INPUT
        else f"the gradient through time of recurrent layer '{layer}'"
    )
    layers = () if layer == INPUT else (layer,)
    if ratio < TEMPORAL_VANISHING_WARNING:
        severe = ratio < TEMPORAL_VANISHING_ERROR
        got = (
            "nothing of the last one's (it underflows to 0 on its way back)"
            if ratio == 0
            else f"{times(ratio)} of the last one's ({number(per_step)} per step)"
        )
        figure = (
            "to get any gradient back to the first steps" if ratio == 0
            else f"to lift the per-step factor {number(per_step)} toward 1"
        )
        when = " at the end of the training run" if training else ""
        severity = "error" if severe else "warning"
        message = (
            f"{subject[0].upper()}{subject[1:]} vanishes{when}: the first of {steps} time "
            f"steps gets {got}, so dependencies that long cannot be learned; "
            f"{advice(remedies, figure=figure)}."
        )
        opened = _opened(info) if training else None
        if gated and not training and ratio >= TEMPORAL_GATED_VANISHED:
            severity = "info"
            message = (
                f"At initialisation {subject} fades: the first of {steps} time steps gets "
                f"{got}; it still arrives, and gates are learnt open in training; "
                f"{advice(remedies, 2, figure='to start them open')}."
            )
        elif gated and training and ratio >= TEMPORAL_GATED_VANISHED:
            evidence["opened"] = json_number(opened) if opened is not None else None
            if opened is not None and opened >= GATE_OPENING:
                severity = "info"
                message = (
                    f"{subject[0].upper()}{subject[1:]} is opening in training: the first of "
                    f"{steps} time steps gets {got} at the end, {times(opened)} what it got "
                    f"at the first recorded step."
                )
            else:
                severity = "warning"
                message = (
                    f"{subject[0].upper()}{subject[1:]} has not opened in "
                    f"{info.get('detail_steps', 0)} recorded detail steps: the first of {steps} "
                    f"time steps gets {got} at the end of the run; "
                    f"{advice(remedies, figure=figure)}."
                )
        return Finding(
            kind="vanishing",
            layers=layers,
            steps=None,
            severity=severity,  # type: ignore[arg-type]
            message=message,
            evidence=evidence,
            remedies=remedies,
        )
    if ratio > TEMPORAL_EXPLODING:
        ex = recurrent_remedies(None, "exploding")
        return Finding(
            kind="exploding",
            layers=layers,
            steps=None,
            severity="error",
            message=(
                f"{subject[0].upper()}{subject[1:]} explodes: the first of {steps} time steps "
                f"gets {times(ratio)} the last one's ({number(per_step)} per step); "
                f"{advice(ex, figure=f'to bring the per-step factor {number(per_step)} to 1')}."
            ),
            evidence=evidence,
            remedies=ex,
        )
    return None
