"""The forward signal's evidence for the exploding rule: the loss against chance, the gain.

Growth of the back-propagated signal across depth predicts a failed run on some paths and
not on others (:func:`gradwatch.verdicts.depth_verdict`); the forward signal says which:

- **the loss at a step against chance**: a cross-entropy (found in the loss's autograd graph,
  ``meta["structure"]["loss"]``) far above ln(classes), the loss of a uniform guess, means
  the logits are huge: the output scale exploded (:data:`~gradwatch.verdicts.LOSS_OVER_CHANCE`);
- **the gain end to end** (checkups): the root mean square of the output-side layer's output
  over that of the input-side layer's input (its output for token inputs), which a
  residual net without normalisation grows geometrically (Zhang et al. 2019;
  :data:`~gradwatch.verdicts.FORWARD_GAIN`);
- **‖∇W‖/‖W‖ of the input-side layer**: the relative step an SGD update of learning rate 1
  would take (a figure the findings report; weights followed by a normalization layer are
  scale-invariant, so it is not a verdict on its own: a BN ResNet-152's stem has 10⁴).
"""

from __future__ import annotations

import math
from typing import Any

from gradwatch.diagnose._view import RunView, num
from gradwatch.verdicts import FORWARD_GAIN, LOSS_OVER_CHANCE


def forward_figures(view: RunView, step: int) -> dict[str, Any]:
    """The forward evidence at ``step`` (JSON-clean; NaN where it is not measured).

    Keys: ``loss``, ``chance`` (None without a cross-entropy), ``loss_over_chance``,
    ``forward_gain`` (checkups), ``input_grad_over_weight`` (‖∇W‖/‖W‖ of the input-side
    layer with a weight norm), ``forward_exploding``.
    """
    loss = view.loss
    value = float(loss.get(step, math.nan)) if len(loss) else math.nan
    chance = (view.structure.get("loss") or {}).get("chance")
    over = value / chance if chance and math.isfinite(value) else math.nan
    gain = forward_gain(view) if view.is_checkup else math.nan
    rel, rel_layer = math.nan, None
    gn, wn = view.wide("grad_norm"), view.wide("weight_norm")
    if step in gn.index and step in wn.index:
        for ly in view.layers:
            g, w = gn.loc[step].get(ly, math.nan), wn.loc[step].get(ly, math.nan)
            if math.isfinite(g) and math.isfinite(w) and w > 0:
                rel, rel_layer = g / w, ly
                break
    exploding = (over == over and over >= LOSS_OVER_CHANCE) or (
        gain == gain and gain >= FORWARD_GAIN
    )
    return {
        "loss": num(value),
        "chance": num(chance) if chance else None,
        "loss_over_chance": num(over),
        "loss_over_chance_threshold": LOSS_OVER_CHANCE,
        "forward_gain": num(gain),
        "forward_gain_threshold": FORWARD_GAIN,
        "input_grad_over_weight": num(rel),
        "input_grad_over_weight_layer": rel_layer,
        "forward_exploding": bool(exploding),
    }


def forward_gain(view: RunView) -> float:
    """Output-side layer's output RMS over the input-side layer's input RMS (checkups)."""
    ck = view.checkup
    rms_in, rms_out = ck.get("rms_in") or {}, ck.get("rms_out") or {}
    if not view.layers:
        return math.nan
    first, last = view.layers[0], view.layers[-1]
    base = rms_in.get(first)
    if not isinstance(base, int | float) or not math.isfinite(base) or base <= 0:
        base = rms_out.get(first)  # token inputs: from the embedding's output
    top = rms_out.get(last)
    if not all(isinstance(v, int | float) and math.isfinite(v) for v in (base, top)):
        return math.nan
    return top / base if base > 0 else math.nan
