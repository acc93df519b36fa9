"""Gradient flow across depth, per step: shared by the vanishing, exploding and healthy_deep rules.

At each recorded step, take the back-propagated signal ``backprop_norm`` (‖∂L/∂output‖) of
every layer, input side first, and summarise how it changes toward the input:

- ``total = bp[input-side layer] / bp[output-side layer]``;
- ``factor``: the per-layer factor of a least-squares fit of ``ln bp`` against the layer's
  position (``bp_i ≈ a · factor^-(i)``), i.e. how much the signal is multiplied by each layer
  it crosses on its way to the input. A product of per-layer Jacobians shrinks or grows
  geometrically (Bengio et al. 1994; Schoenholz et al. 2017: ``E[δ_l²] ∝ χ1^(L-l)``), so a
  straight line in log space is the expected shape, and the fit is robust to one odd layer.

The same is done for the weight gradients (``grad_norm``), which Glorot & Bengio (2010) showed
can look flat while the back-propagated signal shrinks: both numbers go into the evidence.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from gradwatch.diagnose._view import RunView

#: Values at or below this count as an exactly vanished signal (log taken of this instead).
TINY = 1e-300


@dataclass(frozen=True)
class FlowStep:
    """The gradient flow across depth at one step.

    Attributes:
        step: the training step (0 for a checkup).
        layers: layers with a finite ``backprop_norm`` at this step, input side first.
        bp: their ``backprop_norm`` values.
        ratios: ``bp / bp[-1]`` per layer (1 for the output-side layer).
        total: ``bp[0] / bp[-1]``.
        factor: fitted per-layer factor toward the input (< 1 shrinks, > 1 grows).
        grad_total: ``grad_norm`` of the input-side layer over that of the output-side layer
            (NaN when not recorded).
    """

    step: int
    layers: tuple[str, ...]
    bp: np.ndarray
    ratios: np.ndarray
    total: float
    factor: float
    grad_total: float

    @property
    def depth(self) -> int:
        """Number of layers the signal crosses from the output side to the input side."""
        return len(self.layers) - 1

    def evidence(self) -> dict[str, object]:
        """The numbers behind a finding, JSON-clean."""
        from gradwatch.diagnose._view import num

        return {
            "step": int(self.step),
            "backprop_ratio": num(self.total),
            "per_layer_factor": num(self.factor),
            "grad_norm_ratio": num(self.grad_total),
            "input_side_layer": self.layers[0],
            "output_side_layer": self.layers[-1],
            "n_layers": len(self.layers),
            "backprop_norm": {ly: num(v) for ly, v in zip(self.layers, self.bp, strict=True)},
        }


def fit_factor(values: np.ndarray) -> float:
    """Per-layer factor toward the input from a log-linear fit (input side first)."""
    y = np.log(np.maximum(values, TINY))
    x = np.arange(len(y), dtype=np.float64)
    if len(y) < 2:
        return 1.0
    slope = np.polyfit(x, y, 1)[0]
    return float(math.exp(-slope))


def flow_steps(view: RunView) -> list[FlowStep]:
    """The :class:`FlowStep` of every step where it can be computed (memoised on the view).

    A step is skipped when fewer than two layers have a ``backprop_norm``, when any of them
    is NaN/Inf (the nonfinite rule reports those) or when the output-side value is 0.
    """
    return view.memo("flow_steps", _compute)


def _compute(view: RunView) -> list[FlowStep]:
    bp_wide = view.wide("backprop_norm")
    gn_wide = view.wide("grad_norm")
    out = []
    for step, row in bp_wide.iterrows():
        row = row.dropna()
        vals = row.to_numpy(dtype=np.float64)
        if len(vals) < 2 or not np.all(np.isfinite(vals)) or vals[-1] <= 0:
            continue
        layers = tuple(str(c) for c in row.index)
        grad_total = math.nan
        if step in gn_wide.index:
            g = gn_wide.loc[step]
            g0, g1 = g.get(layers[0], math.nan), g.get(layers[-1], math.nan)
            if np.isfinite(g0) and np.isfinite(g1) and g1 > 0:
                grad_total = float(g0 / g1)
        out.append(
            FlowStep(
                step=int(step),
                layers=layers,
                bp=vals,
                ratios=vals / vals[-1],
                total=float(vals[0] / vals[-1]),
                factor=fit_factor(vals),
                grad_total=grad_total,
            )
        )
    return out
