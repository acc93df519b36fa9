"""Rule ``exploding``: what predicts a run that blows up.

"Exploding" is reserved for what predicts a failed run:

- **across depth, through a plain chain** (no normalization, no residual connection, no
  attention): the back-propagated signal grows geometrically toward the input, the chaotic
  phase of mean-field theory (χ1 > 1, e.g. tanh at σw² = 4; ``E[δ_l²] ∝ χ1^(L-l)``,
  Schoenholz et al. 2017). Deep batch-normalised and residual nets grow at initialisation by
  construction (Yang et al. 2019, "A Mean Field Theory of Batch Normalization") and train
  with the standard recipe (He et al. 2016: ResNet-101/152), so growth there is not judged.
  In a training run only growth past :data:`~gradwatch.verdicts.EXPLODING_RATIO` that is
  still there at the last step counts.
- **over the steps of a run**: the total gradient norm jumps by orders of magnitude (cliffs in
  the loss surface, Pascanu, Mikolov & Bengio 2013), or
- **updates that swamp the weights**: ``‖Δw‖/‖w‖`` at or above
  :data:`~gradwatch.verdicts.UPDATE_SWAMP` at a step, for a layer whose weights are not
  zero-initialised (nothing learned survives the next step).

The thresholds are :mod:`gradwatch.verdicts`'.
"""

from __future__ import annotations

import numpy as np

from gradwatch.diagnose._advice import advice, flow_remedies
from gradwatch.diagnose._flow import FlowStep, flow_steps
from gradwatch.diagnose._view import RunView, names, num, persists, step_span, when
from gradwatch.findings import Finding
from gradwatch.verdicts import (
    EXPLODING_GROWTH,
    EXPLODING_RATIO,
    GRAD_NORM_HUGE,
    UPDATE_SWAMP,
    depth_verdict,
)
from gradwatch.wording import number, times

EXPLODING_LAYER_RATIO = 10.0
"""Layers whose signal is above this multiple of the output-side layer's are named."""

TIME_REMEDIES = ("clip_grad_norm", "lower_lr", "warmup")


def exploding_severity(fs: FlowStep, plain_chain: bool, is_checkup: bool = True) -> str | None:
    """Return "error", "warning" or None for one step's gradient flow across depth."""
    v = depth_verdict(fs.total, fs.factor, plain_chain=plain_chain)
    if v is None or v[0] != "exploding":
        return None
    if not is_checkup and fs.total <= EXPLODING_RATIO:
        return None
    return v[1]


def _at_start(held: list[int], recorded: list[int]) -> bool:
    """Whether a run starts in the condition.

    Its first recorded step is the state ``gw.check`` sees at initialisation, whatever the
    network turns into afterwards (a chaotic tanh net saturates and then vanishes).
    """
    return bool(held) and bool(recorded) and held[0] == recorded[0]


def rule(view: RunView) -> list[Finding]:
    """Report gradients that grow toward the input, over training steps, or swamp updates."""
    return _across_depth(view) + _over_steps(view) + _swamping_updates(view)


def _across_depth(view: RunView) -> list[Finding]:
    steps = flow_steps(view)
    held = [fs for fs in steps if exploding_severity(fs, view.plain_chain, view.is_checkup)]
    held_steps, recorded = [fs.step for fs in held], [fs.step for fs in steps]
    if not (persists(held_steps, recorded) or _at_start(held_steps, recorded)):
        return []
    last = held[-1]
    still = held_steps[-1] == recorded[-1]
    sev = exploding_severity(last, view.plain_chain, view.is_checkup)
    severity = (sev or "warning") if still else "warning"
    remedies = flow_remedies(view, "exploding")
    pairs = zip(last.layers, last.ratios, strict=True)
    layers = [ly for ly, r in pairs if r > EXPLODING_LAYER_RATIO]
    layers = layers or [last.layers[0]]
    message = (
        f"The back-propagated gradient grows {times(last.total)} from layer "
        f"'{last.layers[-1]}' to '{last.layers[0]}' ({number(last.factor)} per layer)"
        f"{when(view, held_steps, recorded)}: the input-side layers {names(layers)} get the "
        f"largest updates and training may blow up; {advice(remedies)}."
    )
    evidence = {
        **last.evidence(),
        "axis": "depth",
        "layers_above": list(layers),
        "ratio_threshold": EXPLODING_RATIO,
        "steps_held": len(held_steps),
        "steps_recorded": len(recorded),
        "persists": bool(still),
    }
    return [
        Finding(
            "exploding",
            tuple(layers),
            step_span(view, held_steps),
            severity,  # type: ignore[arg-type]
            message,
            evidence,
            remedies,
        )
    ]


def _over_steps(view: RunView) -> list[Finding]:
    if view.is_checkup:
        return []
    gn = view.wide("grad_norm")
    if len(gn) < 3:
        return []
    arr = gn.to_numpy(dtype=np.float64)
    finite = np.isfinite(arr)
    total = np.sqrt(np.sum(np.where(finite, arr, 0.0) ** 2, axis=1))  # over layers
    ok = finite.any(axis=1)
    steps = [int(s) for s in gn.index]
    base = float(np.median(total[ok][:3])) if ok.any() else 0.0
    growth = total / base if base > 0 else np.full_like(total, np.nan)
    hot = ok & ((growth > EXPLODING_GROWTH) | (total > GRAD_NORM_HUGE))
    held = [s for s, h in zip(steps, hot, strict=True) if h]
    recorded = [s for s, o in zip(steps, ok, strict=True) if o]
    if not persists(held, recorded):
        return []
    i = steps.index(held[-1])
    row = arr[i]
    first = arr[int(np.argmax(ok))]
    with np.errstate(divide="ignore", invalid="ignore"):
        per_layer = np.where(np.isfinite(row) & (first > 0), row / first, np.nan)
    order = np.argsort(-np.nan_to_num(per_layer, nan=-1.0))
    leaders = [str(gn.columns[j]) for j in order[:3] if np.isfinite(per_layer[j])]
    still = held[-1] == recorded[-1]
    message = (
        f"The total gradient norm grew {times(float(growth[i]))}"
        f"{when(view, held, recorded)} (to {number(float(total[i]))}), led by layer "
        f"{names(leaders[:1]) or 'all layers'}: clip the gradient norm or lower the learning rate."
    )
    evidence = {
        "axis": "steps",
        "growth": num(growth[i]),
        "grad_norm_total": num(total[i]),
        "baseline_grad_norm": num(base),
        "growth_threshold": EXPLODING_GROWTH,
        "huge_threshold": GRAD_NORM_HUGE,
        "leading_layers": leaders,
        "steps_held": len(held),
        "persists": bool(still),
    }
    return [
        Finding(
            "exploding",
            tuple(leaders[:3]),
            step_span(view, held),
            "error" if still else "warning",
            message,
            evidence,
            TIME_REMEDIES,
        )
    ]


def _swamping_updates(view: RunView) -> list[Finding]:
    """Updates as large as the weights themselves (zero-initialised layers left out)."""
    if view.is_checkup:
        return []
    ur, wn = view.wide("update_ratio"), view.wide("weight_norm")
    if ur.empty or wn.empty:
        return []
    wn = wn.reindex(index=ur.index, columns=ur.columns)
    arr = ur.to_numpy(dtype=np.float64)
    w = wn.to_numpy(dtype=np.float64)
    # a layer whose weights start at zero (zero-init of the last norm, Fixup) has an infinite
    # ratio at first: judged only once its weights reach a tenth of their largest norm
    wmax = np.nanmax(np.where(np.isfinite(w), w, np.nan), axis=0, initial=0.0)
    grown = np.isfinite(w) & (w > 0.1 * wmax)
    hot_cells = np.isfinite(arr) & grown & (arr >= UPDATE_SWAMP)
    steps = [int(s) for s in ur.index]
    hot = hot_cells.any(axis=1)
    held = [s for s, h in zip(steps, hot, strict=True) if h]
    if not persists(held, steps):
        return []
    i = steps.index(held[-1])
    cols = [j for j in range(arr.shape[1]) if hot_cells[i, j]]
    layers = [str(ur.columns[j]) for j in cols]
    worst = max(cols, key=lambda j: arr[i, j])
    still = held[-1] == steps[-1]
    message = (
        f"Updates as large as the weights{when(view, held, steps)}: ‖Δw‖/‖w‖ reaches "
        f"{number(float(arr[i, worst]))} at '{ur.columns[worst]}', so each step overwrites "
        "what the last one learned; lower the learning rate, warm it up or clip the gradient "
        "norm."
    )
    evidence = {
        "axis": "updates",
        "update_ratio": {ly: num(arr[i, j]) for ly, j in zip(layers, cols, strict=True)},
        "threshold": UPDATE_SWAMP,
        "steps_held": len(held),
        "persists": bool(still),
    }
    return [
        Finding(
            "exploding",
            tuple(layers),
            step_span(view, held),
            "error" if still else "warning",
            message,
            evidence,
            ("lower_lr", "warmup", "clip_grad_norm"),
        )
    ]
