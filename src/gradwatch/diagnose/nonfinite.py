"""Rule ``nonfinite``: where and when NaN or Inf first appears.

Once a NaN enters a network it spreads to everything downstream in the forward pass and to
everything upstream in the backward pass, so what matters is the first step and the layer
where it appears. The rule looks, at the first step with anything non-finite, in this order:

1. a checkup's forward pass (``meta["checkup"]["nonfinite_origin"]``: the first layer, in
   execution order, whose output held NaN/Inf, or "inputs");
2. non-finite weights (``weight_norm``): a previous update overflowed;
3. non-finite activation statistics: the input-side-most such layer produced it forward;
4. non-finite gradients (``nonfinite`` > 0, or non-finite ``grad_norm``/``backprop_norm``):
   the backward pass runs from the output to the input, so the output-side-most such layer is
   where it started;
5. only the loss is non-finite.

References: Pascanu, Mikolov & Bengio 2013 (exploding gradients overflowing to Inf/NaN).
"""

from __future__ import annotations

import math

import numpy as np

from gradwatch.diagnose._view import RunView, num, step_span, when
from gradwatch.findings import Finding

#: Statistics whose NaN/Inf values (or, for ``nonfinite``, positive counts) mark a bad step.
WATCHED = ("nonfinite", "grad_norm", "backprop_norm", "weight_norm", "act_mean", "act_std")

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
    if stat == "nonfinite":
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


def rule(view: RunView) -> list[Finding]:
    """Report the first step and layer where NaN/Inf appears."""
    bad = {stat: _bad(view, stat) for stat in WATCHED}
    loss = view.loss
    bad_loss = [int(s) for s, v in loss.items() if not math.isfinite(v)]
    origin_fwd = view.checkup.get("nonfinite_origin")
    held = sorted(set(bad_loss).union(*(set(b) for b in bad.values())))
    if origin_fwd is not None and not held:
        held = [view.steps[0] if view.steps else 0]
    if not held:
        return []
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
    weights = bad["weight_norm"].get(first, [])
    layers_all = view.layers
    if origin_fwd is not None:
        where, layer = "forward", str(origin_fwd)
        what = (
            "the model's inputs already hold NaN/Inf"
            if layer == "inputs"
            else f"layer '{layer}' produces it in the forward pass (log or sqrt of a negative, "
            "division by zero, overflow?)"
        )
        remedies = ("check_inputs", "lower_lr", "clip_grad_norm")
    elif weights:
        where, layer = "weights", weights[0]
        what = f"the weights of layer '{layer}' are NaN/Inf: an earlier update overflowed"
        remedies = ("lower_lr", "clip_grad_norm", "xavier_init")
    elif acts:
        where, layer = "forward", acts[0]
        what = f"layer '{layer}' produces it in the forward pass"
        remedies = ("check_inputs", "lower_lr", "clip_grad_norm")
    elif grads:
        where, layer = "backward", grads[-1]
        what = (
            f"it starts in the backward pass at layer '{layer}' and reaches "
            f"{len(grads)} of {len(layers_all)} layers"
        )
        remedies = ("clip_grad_norm", "lower_lr", "xavier_init")
    else:
        where, layer = "loss", ""
        what = "only the loss is NaN/Inf (check the targets and the loss function)"
        remedies = ("check_inputs", "lower_lr")
    pos = layers_all.index(layer) if layer in layers_all else -1
    side = "" if pos < 0 else ("input side" if pos < len(layers_all) / 2 else "output side")
    at = "" if view.is_checkup else f" at step {first}"
    place = f" ({side}, layer {pos + 1} of {len(layers_all)})" if side else ""
    message = f"NaN/Inf first appears{at}{place}: {what}; " + (
        "fix that operation or its inputs."
        if where == "forward"
        else "clip gradients or lower the learning rate."
    )
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
        "during": when(view, held, view.steps).strip(),
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


def _order(view: RunView):  # noqa: ANN202 - a sort key
    index = {ly: i for i, ly in enumerate(view.layers)}
    return lambda ly: index.get(ly, len(index))
