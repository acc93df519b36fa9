"""Rule ``nonfinite``: where and when NaN or Inf first appears.

Once a NaN enters a network it spreads to everything downstream in the forward pass and to
everything upstream in the backward pass, so what matters is the first step and the layer
where it appears. The rule looks, at the first step with anything non-finite, in this order:

1. the inputs (``input_nonfinite`` > 0, or a checkup's ``nonfinite_origin == "inputs"``);
2. non-finite weights (``weight_nonfinite`` > 0 or a non-finite ``weight_norm``): a previous
   update overflowed;
3. the forward pass (``forward_nonfinite`` > 0, a checkup's ``nonfinite_origin``, or
   non-finite activation statistics): the first such layer in execution order produced it;
4. non-finite gradients (``nonfinite`` > 0, or non-finite ``grad_norm``/``backprop_norm``):
   the backward pass runs from the output to the input, so the output-side-most such layer is
   where it started;
5. only the loss is non-finite.

The Monitor records the first three at every step whose loss or gradient norm is
non-finite, so the origin is named even between detail steps.

**GradScaler.** Mixed-precision training skips the steps whose scaled gradients overflow and
halves the scale (``skipped`` = 1, ``loss_scale``): routine at the start of fp16 training and
every few thousand steps after. Such steps are not reported; skips that persist
(:data:`SKIP_RUN` in a row, or most of the last steps) are, as kind "nonfinite": the scale
cannot get the gradients finite.

References: Pascanu, Mikolov & Bengio 2013 (exploding gradients overflowing to Inf/NaN).
"""

from __future__ import annotations

import math

import numpy as np

from gradwatch.diagnose._advice import flow_remedies
from gradwatch.diagnose._flow import flow_steps
from gradwatch.diagnose._forward import forward_figures
from gradwatch.diagnose._view import RunView, num, step_span, when
from gradwatch.diagnose.exploding import exploding_severity
from gradwatch.findings import Finding
from gradwatch.wording import number, times

#: Statistics whose NaN/Inf values (or, for the counts, positive values) mark a bad step.
WATCHED = (
    "nonfinite",
    "grad_norm",
    "backprop_norm",
    "weight_norm",
    "act_mean",
    "act_std",
    "weight_nonfinite",
    "forward_nonfinite",
)
#: Counts of NaN/Inf entries (bad when > 0); the other statistics are bad when NaN/Inf.
COUNTS = ("nonfinite", "weight_nonfinite", "forward_nonfinite")

SKIP_RUN = 8
"""GradScaler skips in a row that are no longer routine: the scale fell 2^8 = 256-fold and the
gradients still overflow."""

NONFINITE_COUNT = 0
"""A layer whose gradients hold more than this many NaN/Inf entries is non-finite: any one
NaN poisons every parameter it reaches through the optimizer, so the threshold is zero."""


def _bad(view: RunView, stat: str) -> dict[int, list[str]]:
    """Map step -> layers (input side first) with a bad value of ``stat``.

    Read from the long table, where a NaN value and a value never recorded differ.
    """
    df = view.run.stats
    df = df[(df["stat"] == stat) & (df["layer"] != "")]
    vals = df["value"].to_numpy(dtype=np.float64)
    if stat in COUNTS:
        mask = np.nan_to_num(vals, nan=1.0, posinf=1.0) > NONFINITE_COUNT
    else:
        mask = ~np.isfinite(vals)
    order = {ly: i for i, ly in enumerate(view.layers)}
    out: dict[int, list[str]] = {}
    for step, layer in zip(df["step"].to_numpy()[mask], df["layer"].to_numpy()[mask], strict=True):
        out.setdefault(int(step), []).append(str(layer))
    for layers in out.values():
        layers.sort(key=lambda ly: order.get(ly, len(order)))
    return out


def _run_level(view: RunView, stat: str) -> dict[int, float]:
    """A run-level statistic (layer "") per step."""
    df = view.run.stats
    df = df[(df["stat"] == stat) & (df["layer"] == "")]
    return {int(s): float(v) for s, v in zip(df["step"], df["value"], strict=True)}


def skipped_steps(view: RunView, bad: dict[str, dict[int, list[str]]]) -> list[int]:
    """Steps a GradScaler skipped, in order.

    From ``skipped`` (= 1) when the run recorded it. A run recorded with a scaler but without
    that statistic: a GradScaler skips exactly the steps whose gradients hold NaN/Inf, so a
    step whose only non-finite values are gradients (finite loss, weights and forward) is one.
    """
    recorded = _run_level(view, "skipped")
    if recorded:
        return sorted(s for s, v in recorded.items() if v >= 0.5)
    if not _has_scaler(view):
        return []
    loss = view.loss
    grads = set(bad["nonfinite"]) | set(bad["grad_norm"])
    other = set().union(
        *(set(bad[k]) for k in ("weight_norm", "weight_nonfinite", "forward_nonfinite"))
    )
    return sorted(
        s for s in grads - other if s not in loss.index or math.isfinite(float(loss[s]))
    )


def _persistent_skips(view: RunView, skipped: list[int]) -> list[int]:
    """The skipped steps of the longest run of consecutive skips, if it is not routine."""
    recorded = [s for s in view.steps]
    pos = {s: i for i, s in enumerate(recorded)}
    best: list[int] = []
    cur: list[int] = []
    for s in skipped:
        if cur and pos.get(s, -2) == pos.get(cur[-1], -5) + 1:
            cur.append(s)
        else:
            cur = [s]
        if len(cur) > len(best):
            best = list(cur)
    tail = recorded[-2 * SKIP_RUN :]
    tail_skips = [s for s in tail if s in set(skipped)]
    if len(best) >= SKIP_RUN:
        return best
    if len(tail) >= SKIP_RUN and len(tail_skips) > len(tail) / 2:
        return tail_skips
    return []


def _has_scaler(view: RunView) -> bool:
    return bool((view.meta.get("settings") or {}).get("scaler"))


def rule(view: RunView) -> list[Finding]:
    """Report the first step and layer where NaN/Inf appears."""
    bad = {stat: _bad(view, stat) for stat in WATCHED}
    if _has_scaler(view):
        # ‖δ‖ of a scaled loss can overflow float32 while every gradient entry is finite:
        # a non-finite backprop_norm alone, at a step with finite parameter gradients, is
        # the scale's, not the model's
        param_bad = set(bad["nonfinite"]) | set(bad["grad_norm"])
        bad["backprop_norm"] = {s: v for s, v in bad["backprop_norm"].items() if s in param_bad}
    skipped = skipped_steps(view, bad)
    loss = view.loss
    bad_loss = [int(s) for s, v in loss.items() if not math.isfinite(v)]
    bad_input = [s for s, v in _run_level(view, "input_nonfinite").items() if not v == 0]
    origin_fwd = view.checkup.get("nonfinite_origin")
    routine = set(skipped)
    weights_bad = set(bad["weight_nonfinite"]) | set(bad["weight_norm"])
    held = sorted(
        (set(bad_loss) | set(bad_input)).union(*(set(b) for b in bad.values())) - routine
        | (weights_bad & routine)
    )
    if origin_fwd is not None and not held:
        held = [view.steps[0] if view.steps else 0]
    if not held:
        persistent = _persistent_skips(view, skipped)
        return _skips_finding(view, persistent, skipped) if persistent else []
    first = held[0]
    grads = sorted(
        set(bad["nonfinite"].get(first, []))
        | set(bad["grad_norm"].get(first, []))
        | set(bad["backprop_norm"].get(first, [])),
        key=_order(view),
    )
    acts = sorted(
        set(bad["act_mean"].get(first, [])) | set(bad["act_std"].get(first, [])), key=_order(view)
    )
    weights = sorted(
        set(bad["weight_nonfinite"].get(first, [])) | set(bad["weight_norm"].get(first, [])),
        key=_order(view),
    )
    forward = bad["forward_nonfinite"].get(first, [])
    layers_all = view.layers
    if first in bad_input or origin_fwd == "inputs":
        where, layer = "input", ""
        what = "the model's inputs already hold NaN/Inf"
        remedies = ("check_inputs",)
    elif weights:
        where, layer = "weights", weights[0]
        what = f"the weights of layer '{layer}' are NaN/Inf: an earlier update overflowed"
        remedies = ("lower_lr", "clip_grad_norm")
    elif origin_fwd is not None or forward or acts:
        where = "forward"
        layer = str(origin_fwd) if origin_fwd is not None else (forward or acts)[0]
        what = (
            f"layer '{layer}' produces it in the forward pass (log or sqrt of a negative, "
            "division by zero, overflow?)"
        )
        remedies = ("check_inputs", "lower_lr", "clip_grad_norm")
        if _inputs_finite(view, first):  # the data was looked at: it is not the cause
            remedies = ("lower_lr", "clip_grad_norm")
    elif grads:
        where, layer = "backward", grads[-1]
        arrived = layer in bad["backprop_norm"].get(first, [])
        how = (
            "the gradient reaching its output is already NaN/Inf (it comes from the "
            "operations after it)"
            if arrived
            else "its weight gradient is the first NaN/Inf"
        )
        what = (
            f"it starts in the backward pass at layer '{layer}': {how}; it reaches "
            f"{len(grads)} of {len(layers_all)} layers"
        )
        remedies = ("clip_grad_norm", "lower_lr")
    else:
        where, layer = "loss", ""
        what = "only the loss is NaN/Inf (check the targets and the loss function)"
        remedies = ("check_inputs", "lower_lr")
    cause = _exploding_before(view, first) if where in ("forward", "backward", "weights") else None
    if cause is not None:
        what += (
            f", after updates driven by the exploding gradient found at step {cause['step']} "
            f"(it grows {times(cause['backprop_ratio'])} toward the input)"
        )
        remedies = tuple(dict.fromkeys((*cause["remedies"], *remedies)))
    pos = layers_all.index(layer) if layer in layers_all else -1
    side = "" if pos < 0 else ("input side" if pos < len(layers_all) / 2 else "output side")
    at = "" if view.is_checkup else f" at step {first}"
    place = f" ({side}, layer {pos + 1} of {len(layers_all)})" if side else ""
    advice = {
        "forward": (
            "tame the explosion first." if cause is not None
            else "fix that operation or its inputs."
        ),
        "input": "clean the data (torch.nan_to_num, or drop the bad samples).",
    }.get(where, "clip gradients or lower the learning rate.")
    message = f"NaN/Inf first appears{at}{place}: {what}; {advice}"
    loss_at = loss.get(first, math.nan) if len(loss) else math.nan
    evidence = {
        "first_step": int(first),
        "origin": where,
        "origin_layer": layer,
        "side": side,
        "position": pos,
        "n_layers": len(layers_all),
        "loss": num(loss_at),
        "layers_nonfinite_grad": grads,
        "layers_nonfinite_act": acts,
        "layers_nonfinite_weight": list(weights),
        "steps_nonfinite": len(held),
        "steps_skipped_by_scaler": len(skipped),
        "during": when(view, held, view.steps).strip(),
        "inputs_finite": _inputs_finite(view, first),
        "caused_by_exploding_at_step": cause["step"] if cause is not None else None,
    }
    return [
        Finding(
            kind="nonfinite",
            layers=(layer,) if layer else (),
            steps=step_span(view, held),
            severity="error",
            message=message,
            evidence=evidence,
            remedies=remedies,
        )
    ]


def _inputs_finite(view: RunView, step: int) -> bool:
    """Whether the inputs were seen finite at ``step``.

    A checkup looks at its inputs (``nonfinite_origin`` is "inputs" otherwise); a run records
    ``input_nonfinite`` at each step whose gradients are not finite.
    """
    if view.is_checkup:
        return view.checkup.get("nonfinite_origin") != "inputs"
    return _run_level(view, "input_nonfinite").get(step) == 0


def _exploding_before(view: RunView, first: int) -> dict | None:
    """The exploding gradient found across depth at a step before ``first``, if any.

    A NaN that appears after an update driven by such a gradient was caused by it (the
    update overflowed the weights or the next forward pass), not by the data.
    """
    if view.is_checkup:
        return None
    for fs in flow_steps(view):
        if fs.step >= first:
            break
        if exploding_severity(fs, view):
            fwd = forward_figures(view, fs.step)["forward_exploding"]
            return {
                "step": fs.step,
                "backprop_ratio": fs.total,
                "remedies": flow_remedies(view, "exploding", forward_exploding=fwd),
            }
    return None


def _order(view: RunView):  # noqa: ANN202 - a sort key
    index = {ly: i for i, ly in enumerate(view.layers)}
    return lambda ly: index.get(ly, len(index))


def _skips_finding(view: RunView, persistent: list[int], skipped: list[int]) -> list[Finding]:
    scale = _run_level(view, "loss_scale")
    at = scale.get(persistent[-1])
    scale_txt = f" (loss scale down to {number(at)})" if at is not None else ""
    message = (
        f"The GradScaler skipped {len(persistent)} steps in a row"
        f"{when(view, persistent, view.steps)}{scale_txt}: the gradients overflow whatever "
        "the scale, so the model stops learning; "
        "lower the learning rate, clip the unscaled gradient norm, or train this part in "
        "float32 or bfloat16."
    )
    evidence = {
        "origin": "scaler",
        "steps_skipped": len(skipped),
        "longest_run": len(persistent),
        "skip_run_threshold": SKIP_RUN,
        "loss_scale": num(at) if at is not None else None,
    }
    return [
        Finding(
            "nonfinite",
            (),
            step_span(view, persistent),
            "error",
            message,
            evidence,
            ("lower_lr", "clip_grad_norm"),
        )
    ]
