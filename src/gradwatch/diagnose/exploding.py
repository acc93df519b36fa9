"""Rule ``exploding``: what predicts a run that blows up.

"Exploding" is reserved for what predicts a failed run:

- **across depth**, for every architecture, judged by what the growth means on the path the
  signal takes (:func:`gradwatch.verdicts.depth_verdict`, ``view.path``): through a plain
  chain the back-propagated signal grows geometrically toward the input in the chaotic phase
  of mean-field theory (χ1 > 1, e.g. tanh at σw² = 4; Schoenholz et al. 2017); through a
  chain of normalised layers without shortcuts batch norm grows it geometrically with depth
  (Yang et al. 2019, "A Mean Field Theory of Batch Normalization": a warning, with the
  figures); along a residual stream (read at the joins, :mod:`._flow`) growth counts when
  the forward signal explodes with it: a loss far above chance or an output far above the
  input (:mod:`._forward`; a residual net without normalisation, Zhang et al. 2019). Deep
  BN ResNets grow at initialisation and train with the standard recipe (He et al. 2016:
  ResNet-101/152). In a training run only growth past
  :data:`~gradwatch.verdicts.EXPLODING_RATIO` that is still there at the last step counts,
  besides the first recorded step (the state ``gw.check`` sees).
- **over the steps of a run**: the total gradient norm jumps by orders of magnitude (cliffs in
  the loss surface, Pascanu, Mikolov & Bengio 2013), or
- **updates that swamp the weights**: ``‖Δw‖`` at or above
  :data:`~gradwatch.verdicts.UPDATE_SWAMP` times the weights it was applied to
  (:func:`before_step`) at a step, for a layer whose weights are not zero-initialised
  (nothing learned survives the next step) and that owns a weight matrix or kernel: the
  norm of a gain (a scalar or a vector: SkipInit's α, a layer scale, a norm's γ) is the
  value it learned, not the scale of features, and one that starts at 0 crosses 0 as it
  learns, where its relative update has no bound. Held at a few steps only, a swamp counts
  when the run has not recovered from it.

The thresholds are :mod:`gradwatch.verdicts`'.
"""

from __future__ import annotations

import numpy as np

from gradwatch.diagnose._advice import advice, flow_remedies
from gradwatch.diagnose._flow import FlowStep, as_layers, flow_steps
from gradwatch.diagnose._forward import forward_figures
from gradwatch.diagnose._view import (
    LOSS_FELL,
    RunView,
    finite_loss,
    names,
    num,
    persists,
    step_span,
    when,
)
from gradwatch.diagnose.not_learning import NOT_LEARNING, NOT_LEARNING_MIN_STEPS
from gradwatch.findings import Finding
from gradwatch.verdicts import (
    EXPLODING_FACTOR,
    EXPLODING_GROWTH,
    EXPLODING_RATIO,
    EXPLODING_RATIO_WITH_FACTOR,
    GRAD_NORM_HUGE,
    UPDATE_SWAMP,
    depth_verdict,
)
from gradwatch.wording import number, times

EXPLODING_LAYER_RATIO = 10.0
"""Layers whose signal is above this multiple of the output-side layer's are named."""

TIME_REMEDIES = ("clip_grad_norm", "lower_lr", "warmup")


def exploding_severity(fs: FlowStep, view: RunView) -> str | None:
    """Return "error", "warning" or None for one step's gradient flow across depth."""
    forward = forward_figures(view, fs.step)["forward_exploding"]
    v = depth_verdict(fs.total, fs.factor, path=view.path, forward_exploding=forward)
    if v is None or v[0] != "exploding":
        return None
    if not view.is_checkup and fs.total <= EXPLODING_RATIO:
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


def stalled_from_start(view: RunView, steps: list[FlowStep]) -> tuple[float, float] | None:
    """``(first loss, last loss)`` of a run that starts in batch norm's explosion and stalls.

    Through normalised layers without shortcuts the growth at initialisation is not a
    verdict below :data:`~gradwatch.verdicts.EXPLODING_RATIO` on its own (a BN plain-34
    grows ~140× and trains at a learning rate of 0.01); a training run says whether it was:
    its first recorded step (the state ``gw.check`` sees) grows steadily (past
    :data:`~gradwatch.verdicts.EXPLODING_RATIO_WITH_FACTOR` at more than
    :data:`~gradwatch.verdicts.EXPLODING_FACTOR` per layer, the growth Yang et al. 2019
    predict) and the loss was not learnt down: the median of the last fifth of the losses
    at or above :data:`~gradwatch.diagnose.not_learning.NOT_LEARNING` of the median of the
    first three, over at least :data:`~gradwatch.diagnose.not_learning.NOT_LEARNING_MIN_STEPS`
    (the ``not_learning`` rule's test).
    """
    if view.is_checkup or view.path != "normalized" or not steps:
        return None
    _, losses = finite_loss(view)
    if len(losses) < NOT_LEARNING_MIN_STEPS:
        return None
    start = float(np.median(losses[:3]))
    end = float(np.median(losses[-max(1, len(losses) // 5) :]))
    if not (start > 0 and end >= NOT_LEARNING * start):
        return None
    first = steps[0]
    if not (first.total > EXPLODING_RATIO_WITH_FACTOR and first.factor > EXPLODING_FACTOR):
        return None
    return start, end


def _across_depth(view: RunView) -> list[Finding]:
    steps = flow_steps(view)
    held = [fs for fs in steps if exploding_severity(fs, view)]
    held_steps, recorded = [fs.step for fs in held], [fs.step for fs in steps]
    stalled = None
    if not (persists(held_steps, recorded) or _at_start(held_steps, recorded)):
        stalled = stalled_from_start(view, steps)
        if stalled is None:
            return []
        held, held_steps = [steps[0]], [steps[0].step]
    last = held[-1]
    still = held_steps[-1] == recorded[-1]
    sev = exploding_severity(last, view)
    severity = (sev or "warning") if still else "warning"
    forward = forward_figures(view, last.step)
    remedies = flow_remedies(view, "exploding", forward_exploding=forward["forward_exploding"])
    pairs = zip(last.layers, last.ratios, strict=True)
    layers = [ly for ly, r in pairs if r > EXPLODING_LAYER_RATIO]
    layers = as_layers(view, layers or [last.layers[0]])
    message = (
        f"The back-propagated gradient grows {times(last.total)} from "
        f"'{last.layers[-1]}' to '{last.layers[0]}' ({number(last.factor)} per layer"
        f"{_along(view)}){when(view, held_steps, recorded)}{_forward_clause(forward)}: the "
        f"input-side layers {names(layers)} get the largest updates and training may blow up"
        f"{_why(view, forward)}{_stalled(stalled)}; "
        f"{advice(remedies, figure=_figure(last, forward))}."
    )
    evidence = {
        **last.evidence(),
        **forward,
        "axis": "depth",
        "path": view.path,
        "layers_above": list(layers),
        "ratio_threshold": EXPLODING_RATIO,
        "steps_held": len(held_steps),
        "steps_recorded": len(recorded),
        "persists": bool(still),
        "stalled_from_start": stalled is not None,
    }
    if stalled is not None:
        evidence["loss_first"], evidence["loss_last"] = num(stalled[0]), num(stalled[1])
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


def _along(view: RunView) -> str:
    return {
        "residual": ", along the residual stream",
        "normalized": ", through normalised layers without shortcuts",
    }.get(view.path, "")


def _forward_clause(forward: dict) -> str:
    """``, while the loss is 1.6e4 (7000× chance) and the output 4e5× the input``."""
    parts = []
    over = forward.get("loss_over_chance")
    if isinstance(over, float) and over == over and over >= 1.5:
        parts.append(f"the loss is {number(forward['loss'])} ({times(over)} chance, "
                     f"{number(forward['chance'])})")
    gain = forward.get("forward_gain")
    if isinstance(gain, float) and gain == gain and gain >= 10:
        parts.append(f"the output's scale is {times(gain)} the input's")
    rel = forward.get("input_grad_over_weight")
    if isinstance(rel, float) and rel == rel and rel >= 1:
        parts.append(f"the input-side layer '{forward['input_grad_over_weight_layer']}' has "
                     f"‖∇W‖/‖W‖ = {number(rel)}, so one SGD step at learning rate 0.1 moves it by "
                     f"{number(10 * rel)}% of its size")
    return (", while " + " and ".join(parts)) if parts else ""


def _stalled(stalled: tuple[float, float] | None) -> str:
    if stalled is None:
        return ""
    return (f", and the loss was not learnt down ({number(stalled[0])} at the start, "
            f"{number(stalled[1])} at the end): the run started in that explosion and did not "
            "learn")


def _why(view: RunView, forward: dict) -> str:
    if view.path == "normalized":
        return " (batch norm without shortcuts grows the gradient with depth, Yang et al. 2019)"
    if view.path == "residual" and forward.get("forward_exploding"):
        return (" (each block adds its variance to the stream when nothing normalises it, "
                "Zhang et al. 2019)")
    return ""


def _figure(last: FlowStep, forward: dict) -> str:
    """The measured figure the remedies address."""
    if forward.get("forward_exploding"):
        return f"to bring the {times(last.total)} growth and the output's scale down"
    return f"to bring the per-layer factor {number(last.factor)} down to 1"


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


def before_step(ratio: np.ndarray) -> np.ndarray:
    """``‖Δw‖/‖w_before‖`` from the recorded ``r = ‖Δw‖/‖w_after‖``, for Δw ⟂ w_before.

    ``update_ratio`` divides by the weights *after* the step, which an update that dominates
    them has become: ``r`` tends to 1, not to the update's size, as the update grows. For an
    update orthogonal to the weights it replaces (a random init's weights and an update
    made of gradients, in many dimensions), ``‖w_after‖² = ‖w_before‖² + ‖Δw‖²``, so the
    update over the weights before it is ``r / √(1 − r²)`` (inf from r ≥ 1).
    """
    r = np.asarray(ratio, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(r < 1, r / np.sqrt(np.clip(1 - r * r, 0, None)), np.inf)


def _swamping_updates(view: RunView) -> list[Finding]:
    """Updates as large as the weights themselves (zero-initialised layers left out).

    Judged on :func:`before_step` (the update over the weights it was applied to). Held at
    enough steps, or at the last one, it is an error (a warning once it has cleared). A swamp
    at a few steps that the run has not recovered from (its loss does not end below
    :data:`~gradwatch.diagnose._view.LOSS_FELL` of the loss before the first such step) is a
    warning: the step threw the weights away and the loss shows it; one the run recovered
    from is a note.
    """
    if view.is_checkup:
        return []
    ur, wn = view.wide("update_ratio"), view.wide("weight_norm")
    if ur.empty or wn.empty:
        return []
    wn = wn.reindex(index=ur.index, columns=ur.columns)
    arr = ur.to_numpy(dtype=np.float64)
    rel = before_step(arr)
    w = wn.to_numpy(dtype=np.float64)
    # a layer whose weights start at zero (zero-init of the last norm, Fixup) has an infinite
    # ratio at first: judged only once its weights reach a tenth of their largest norm
    wmax = np.nanmax(np.where(np.isfinite(w), w, np.nan), axis=0, initial=0.0)
    grown = np.isfinite(w) & (w > 0.1 * wmax)
    has_matrix = np.array([_has_matrix(view, str(c)) for c in ur.columns], dtype=bool)
    hot_cells = np.isfinite(arr) & grown & (rel >= UPDATE_SWAMP) & has_matrix[None, :]
    steps = [int(s) for s in ur.index]
    hot = hot_cells.any(axis=1)
    held = [s for s, h in zip(steps, hot, strict=True) if h]
    if not held:
        return []
    lasting = persists(held, steps)
    i = steps.index(held[-1])
    cols = [j for j in range(arr.shape[1]) if hot_cells[i, j]]
    layers = [str(ur.columns[j]) for j in cols]
    worst = max(cols, key=lambda j: arr[i, j])
    still = held[-1] == steps[-1]
    size = float(rel[i, worst])
    figures = (
        f"‖Δw‖/‖w‖ reaches {number(float(arr[i, worst]))} at '{ur.columns[worst]}' against "
        "the weights after the step, "
        + (f"an update about {number(size)}× the weights it was applied to" if np.isfinite(size)
           else "an update larger than the weights it was applied to")
    )
    loss = _loss_around(view, held[0])
    if lasting:
        severity = "error" if still else "warning"
        message = (
            f"Updates as large as the weights{when(view, held, steps)}: {figures}, so each "
            "step overwrites what the last one learned; lower the learning rate, warm it up "
            "or clip the gradient norm."
        )
    else:
        recovered = bool(loss) and loss["end"] < LOSS_FELL * loss["before"]
        severity = "info" if recovered else "warning"
        after = (
            f"; the loss went from {number(loss['before'])} to {number(loss['peak'])} right "
            f"after it and ends at {number(loss['end'])}" if loss else ""
        )
        outcome = (
            "the run recovered from it" if recovered
            else "the run has not recovered (its loss has not fallen below where it was)"
        )
        message = (
            f"An update replaced the weights{when(view, held, steps)}: {figures}{after}; "
            f"{outcome}; lower the learning rate or warm it up."
        )
    evidence = {
        "axis": "updates",
        "update_ratio": {ly: num(arr[i, j]) for ly, j in zip(layers, cols, strict=True)},
        "update_over_weights_before": {
            ly: num(rel[i, j]) for ly, j in zip(layers, cols, strict=True)
        },
        "threshold": UPDATE_SWAMP,
        "steps_held": len(held),
        "persists": bool(still),
        "lasting": bool(lasting),
        **({f"loss_{k}": num(v) for k, v in loss.items()} if loss else {}),
    }
    return [
        Finding(
            "exploding",
            tuple(layers),
            step_span(view, held),
            severity,  # type: ignore[arg-type]
            message,
            evidence,
            ("lower_lr", "warmup", "clip_grad_norm"),
        )
    ]


def _loss_around(view: RunView, step: int) -> dict[str, float]:
    """The loss at ``step`` (before its update), after it and at the end of the run.

    ``before``: the loss recorded at ``step``; ``peak``: the largest over the next tenth of
    the run; ``end``: the median of the last fifth. Empty without finite losses there.
    """
    st, v = finite_loss(view)
    if len(v) < 5 or step not in st:
        return {}
    k = st.index(step)
    after = v[k + 1: k + 1 + max(1, len(v) // 10)]
    if not len(after):
        return {}
    return {"before": float(v[k]), "peak": float(np.max(after)),
            "end": float(np.median(v[-max(1, len(v) // 5):]))}


def _has_matrix(view: RunView, layer: str) -> bool:
    """Whether ``layer`` owns a parameter with two or more non-trivial dimensions.

    True when the shapes are not recorded.
    """
    shapes = (view.meta.get("layer_info") or {}).get(layer, {}).get("shapes")
    if not isinstance(shapes, list) or not shapes:
        return True
    return any(sum(int(n) > 1 for n in shape) >= 2 for shape in shapes)
