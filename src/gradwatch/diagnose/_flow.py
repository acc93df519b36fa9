"""Gradient flow across depth, per step: shared by the vanishing, exploding and healthy_deep rules.

The rules read ``backprop_norm`` = ‖∂L/∂(layer output)‖, the back-propagated signal δ,
input side first, and compare it **only between layers whose outputs have the same shape**
(batch dimension aside):

- across a same-shape step the L2 norm, the per-element RMS and the per-sample norm change by
  the same factor, the one mean-field theory speaks of: ``E‖δ_{l−1}‖² = χ1 E‖δ_l‖²`` with
  χ1 = σw² E[φ'²] (Schoenholz et al. 2017), ``< 1`` in the ordered phase;
- across a shape change every one of them picks up a factor set by the operation, not by
  the health of the network: a global average pool over H×W multiplies ‖δ‖ by 1/√(HW) (and
  the RMS by 1/HW); a ReLU conv C_in → C_out with stride s keeps ‖δ‖ under fan-in (He) init
  but multiplies the RMS by √(C_out/C_in)/s, and under fan-out init (ResNet) multiplies ‖δ‖
  by √(C_in/C_out) and the RMS by 1/s (E‖Mᵀδ‖² = fan_in·Var(W)·‖δ‖² for a conv M, whatever
  its stride). A straight line fitted through norms of different shapes reads such one-off
  steps as decay.

So the signal is followed from the output side to the input side (layers in execution order)
by a walk that, from each layer, steps to the nearest input-side layer with the same output
shape, counting that gain, and crosses a shape change (to the layer just before) without
counting it. In a plain net this compares neighbours; in a residual net it follows the trunk
(the last layer of each residual branch, whose δ is the residual stream's, and the layers
outside the branches) within each stage. ``total``
is the product of the counted gains and ``factor`` their geometric mean: how much the signal
is multiplied by each layer it crosses. When output shapes are not recorded every step counts.

In a network with normalization layers, a layer whose output is normalised next (a conv
followed by its BatchNorm) is read at the norm's output instead: a norm is scale-invariant,
``N(αx) = N(x)``, so the δ at its input carries a factor 1/σ of the input's arbitrary scale
(Ioffe & Szegedy 2015; Arora et al. 2019, "Theoretical analysis of auto rate-tuning by batch
normalization"), while the δ at its output does not.
The weight-gradient ratio (``grad_norm``) goes into the evidence too: Glorot & Bengio (2010)
showed it can look flat while δ vanishes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from gradwatch.diagnose._view import RunView, num

#: Values at or below this count as an exactly vanished signal (log taken of this instead).
TINY = 1e-300


@dataclass(frozen=True)
class FlowStep:
    """The gradient flow across depth at one step.

    Attributes:
        step: the training step (0 for a checkup).
        layers: the layers the walk visited, input side first.
        bp: their ``backprop_norm`` values.
        ratios: each layer's signal over the output-side layer's, through same-shape steps
            only (1 for the output-side layer).
        total: the input-side layer's ratio.
        factor: geometric mean gain per counted step toward the input (< 1 shrinks).
        counted: the number of same-shape steps counted.
        grad_total: ``grad_norm`` of the input-side layer over that of the output-side layer
            (NaN when not recorded).
    """

    step: int
    layers: tuple[str, ...]
    bp: np.ndarray
    ratios: np.ndarray
    total: float
    factor: float
    counted: int
    grad_total: float

    @property
    def depth(self) -> int:
        """Number of layers the signal crosses from the output side to the input side."""
        return len(self.layers) - 1

    def evidence(self) -> dict[str, object]:
        """The numbers behind a finding, JSON-clean."""
        return {
            "step": int(self.step),
            "backprop_ratio": num(self.total),
            "per_layer_factor": num(self.factor),
            "same_shape_steps": int(self.counted),
            "grad_norm_ratio": num(self.grad_total),
            "input_side_layer": self.layers[0],
            "output_side_layer": self.layers[-1],
            "n_layers": len(self.layers),
            "backprop_norm": {ly: num(v) for ly, v in zip(self.layers, self.bp, strict=True)},
        }


def same_shape_walk(
    bp: np.ndarray, shapes: list[tuple[int, ...] | None]
) -> tuple[list[int], np.ndarray, int]:
    """Follow the signal from the output side through same-shape steps (see the module doc).

    Args:
        bp: ``backprop_norm`` per layer, input side first (finite, >= 0).
        shapes: each layer's output shape without the batch dimension (None: unknown, the
            same as any other).

    Returns:
        (indices of the layers visited, input side first; each one's signal over the
        output-side layer's through counted steps; the number of steps counted).
    """
    logs = np.log(np.maximum(bp, TINY))
    i = len(bp) - 1
    path, ratio_log, counted = [i], [0.0], 0
    while i > 0:
        j = next(
            (
                k
                for k in range(i - 1, -1, -1)
                if shapes[k] is None or shapes[i] is None or shapes[k] == shapes[i]
            ),
            None,
        )
        if j is None:  # a shape change: step over it without counting its factor
            j, gain = i - 1, 0.0
        else:
            gain, counted = logs[j] - logs[i], counted + 1
        path.append(j)
        ratio_log.append(ratio_log[-1] + gain)
        i = j
    return path[::-1], np.exp(np.array(ratio_log[::-1])), counted


def flow_layers(view: RunView, columns: list[str]) -> list[str]:
    """The layers whose δ the rules compare.

    A layer normalised next is read at its norm. In a residual net only the trunk is
    followed: the layers inside a residual branch are left out but its last one, whose δ is
    the residual stream's (a branch whose last norm starts at zero, Goyal et al. 2017, passes
    no gradient inside by design).
    """
    inside: set[str] = set()
    for branch in view.structure.get("residual_branches") or ():
        inside.update(branch[:-1])
    columns = [c for c in columns if c not in inside]
    out = []
    for k, ly in enumerate(columns):
        nxt = columns[k + 1] if k + 1 < len(columns) else None
        if (
            not view.is_norm(ly)
            and nxt is not None
            and view.is_norm(nxt)
            and view.out_shape(ly) == view.out_shape(nxt)
        ):
            continue
        out.append(ly)
    return out


def flow_steps(view: RunView) -> list[FlowStep]:
    """The :class:`FlowStep` of every step where it can be computed (memoised on the view).

    A step is skipped when fewer than two weight layers have a ``backprop_norm``, when any of
    them is NaN/Inf (the nonfinite rule reports those), when the output-side value is 0 or
    when no same-shape step is left to compare.
    """
    return view.memo("flow_steps", _compute)


def _compute(view: RunView) -> list[FlowStep]:
    bp_wide = view.wide("backprop_norm")
    bp_wide = bp_wide[flow_layers(view, [str(c) for c in bp_wide.columns])]
    gn_wide = view.wide("grad_norm")
    out = []
    for step, row in bp_wide.iterrows():
        row = row.dropna()
        vals = row.to_numpy(dtype=np.float64)
        if len(vals) < 2 or not np.all(np.isfinite(vals)) or vals[-1] <= 0:
            continue
        names = [str(c) for c in row.index]
        path, ratios, counted = same_shape_walk(vals, [view.out_shape(ly) for ly in names])
        if counted == 0:
            continue
        layers = tuple(names[k] for k in path)
        vals = vals[path]
        grad_total = math.nan
        if step in gn_wide.index:
            g = gn_wide.loc[step]
            g0, g1 = g.get(layers[0], math.nan), g.get(layers[-1], math.nan)
            if np.isfinite(g0) and np.isfinite(g1) and g1 > 0:
                grad_total = float(g0 / g1)
        total = float(ratios[0])
        factor = math.exp(math.log(max(total, TINY)) / counted)
        out.append(
            FlowStep(
                step=int(step),
                layers=layers,
                bp=vals,
                ratios=ratios,
                total=total,
                factor=factor,
                counted=counted,
                grad_total=grad_total,
            )
        )
    return out
