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
        decay: the signal's change over every layer the walk crossed, counted or not: the
            per-layer factor compounded over them, ``factor^depth``, where the end-to-end
            ratio ``bp[0] / bp[-1]`` measured across the shape changes is as small (else
            that ratio), and never above ``total`` (see :func:`crossed_decay`).
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
    decay: float = math.nan

    @property
    def vanishing_ratio(self) -> float:
        """The ratio the vanishing rule judges: :attr:`decay` when known, else :attr:`total`."""
        return self.decay if self.decay == self.decay else self.total

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


def crossed_decay(total: float, factor: float, depth: int, end_to_end: float) -> float:
    """How much the signal shrinks over every layer the walk crossed, shape changes included.

    The walk counts only same-shape steps, because an operation that changes the shape adds
    a factor of its own (an average pool over k×k multiplies ‖δ‖ by 1/k). But the layer a
    shape change crosses (a conv that doubles the channels after a pool) multiplies the
    signal by its per-layer factor as its neighbours do: a VGG with a pool every one or two
    convs counts 4 of its 10 steps, and at PyTorch's default init (0.4 per layer at every
    layer) the counted ones alone give ×0.02, the whole net ×1.2e-4. So the counted
    per-layer ``factor`` is compounded over the ``depth`` layers crossed, and the signal is
    taken to shrink that far only as far as the end-to-end ratio measured across the shape
    changes confirms it (no operation's own factor is read as decay): ``min(total,
    max(factor^depth, end_to_end))``. Where nothing changes shape, or where the per-layer
    factor is 1 or more, this is ``total``.
    """
    if not (factor < 1 and depth > 0 and end_to_end == end_to_end):
        return total
    compounded = math.exp(depth * math.log(max(factor, TINY)))
    return min(total, max(compounded, end_to_end))


def branch_layers(view: RunView) -> tuple[set[str], list[str | None]]:
    """(Layers inside residual branches that do not read the stream, each branch's output).

    A branch's output layer is the one nearest its join in the autograd graph
    (``structure["branch_outputs"]``; the last one registered for runs recorded without it):
    when it feeds the addition directly its δ is the residual stream's (a ResNet block's last
    norm; the block that owns a layer-scale γ in a ConvNeXt). The other layers of a branch
    see the stream through the branch's own scale (a layer scale of 1e-6, or a last norm
    that starts at zero, Goyal et al. 2017, passes that fraction of the stream's gradient
    inside by design), so they are not on the path the signal takes.
    """
    st = view.structure
    branches = st.get("residual_branches") or ()
    outs = list(st.get("branch_outputs") or ())
    inside: set[str] = set()
    kept: list[str | None] = []
    for k, branch in enumerate(branches):
        out = outs[k] if k < len(outs) else None
        keep = out if out in branch else (branch[-1] if branch else None)
        inside.update(b for b in branch if b != keep)
        kept.append(keep)
    return inside, kept


def flow_layers(view: RunView, columns: list[str]) -> list[str]:
    """The layers whose δ the rules compare, where no residual stream was measured.

    A layer normalised next is read at its norm. In a residual net only the trunk is
    followed: the layers inside a residual branch are left out but its output layer
    (:func:`branch_layers`).
    """
    inside, _ = branch_layers(view)
    return _norm_read([c for c in columns if c not in inside], view)


def _norm_read(columns: list[str], view: RunView) -> list[str]:
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


@dataclass(frozen=True)
class TrunkPoint:
    """The residual stream right after one residual join, as a checkup measured it."""

    name: str
    after: str
    grad_norm: float
    shape: tuple[int, ...] | None
    branch: tuple[str, ...]


def trunk_points(view: RunView) -> list[TrunkPoint]:
    """The residual stream's ‖∂L/∂h‖ at each join a checkup measured, input side first.

    Named after the branch's common module prefix: ``'layer1.0 (+)'``.
    """
    rows = view.checkup.get("trunk") or []
    out, seen = [], {}
    for row in rows:
        after, value = row.get("after"), row.get("grad_norm")
        if not after or not isinstance(value, int | float):
            continue
        branch = tuple(row.get("branch") or ())
        base = _prefix(branch) or str(after)
        seen[base] = seen.get(base, 0) + 1
        name = f"{base} (+)" if seen[base] == 1 else f"{base} (+{seen[base]})"
        shape = row.get("shape") or []
        out.append(TrunkPoint(name, str(after), float(value),
                              tuple(int(n) for n in shape[1:]) if shape else None, branch))
    return out


def _prefix(names: tuple[str, ...]) -> str:
    parts = [n.split(".") for n in names if n != "(root)"]
    if not parts:
        return ""
    common = []
    for pieces in zip(*parts, strict=False):
        if len(set(pieces)) != 1:
            break
        common.append(pieces[0])
    return ".".join(common)


def as_layers(view: RunView, names: list[str]) -> list[str]:
    """``names`` with each trunk point replaced by its branch's output layer, deduplicated."""
    after = {p.name: p.after for p in trunk_points(view)} if view.is_checkup else {}
    return list(dict.fromkeys(after.get(n, n) for n in names))


Shapes = dict[str, tuple[int, ...] | None]


def trunk_path(
    view: RunView, columns: list[str]
) -> tuple[list[str], dict[str, float], Shapes] | None:
    """The path along the measured residual stream, or None when none was measured.

    The layers outside every residual branch, in execution order, with the stream's value at
    each join inserted after its branch's output layer (all branch layers left out).
    Returns (names, values of the trunk points, their shapes).
    """
    points = trunk_points(view)
    if not points:
        return None
    inside, kept = branch_layers(view)
    inside |= {k for k in kept if k is not None}
    by_after: dict[str, list[TrunkPoint]] = {}
    for p in points:
        by_after.setdefault(p.after, []).append(p)
    names: list[str] = []
    for ly in columns:
        if ly not in inside:
            names.append(ly)
        names += [p.name for p in by_after.pop(ly, [])]
    for rest in by_after.values():  # a join after a layer with no recorded signal
        names += [p.name for p in rest]
    names = _norm_read(names, view)
    return (names, {p.name: p.grad_norm for p in points}, {p.name: p.shape for p in points})


def flow_steps(view: RunView) -> list[FlowStep]:
    """The :class:`FlowStep` of every step where it can be computed (memoised on the view).

    A step is skipped when fewer than two weight layers have a ``backprop_norm``, when any of
    them is NaN/Inf (the nonfinite rule reports those), when the output-side value is 0 or
    when no same-shape step is left to compare.
    """
    return view.memo("flow_steps", _compute)


def _compute(view: RunView) -> list[FlowStep]:
    bp_wide = view.wide("backprop_norm")
    columns = [str(c) for c in bp_wide.columns]
    trunk = trunk_path(view, columns) if view.is_checkup else None
    if trunk is not None:
        names, values, shapes = trunk
        bp_wide = bp_wide.reindex(columns=names)
        for name, v in values.items():
            bp_wide[name] = v
    else:
        bp_wide, shapes = bp_wide[flow_layers(view, columns)], {}
    gn_wide = view.wide("grad_norm")
    out = []
    for step, row in bp_wide.iterrows():
        row = row.dropna()
        vals = row.to_numpy(dtype=np.float64)
        if len(vals) < 2 or not np.all(np.isfinite(vals)) or vals[-1] <= 0:
            continue
        names = [str(c) for c in row.index]
        path, ratios, counted = same_shape_walk(
            vals, [shapes[ly] if ly in shapes else view.out_shape(ly) for ly in names]
        )
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
        decay = crossed_decay(total, factor, len(path) - 1, float(vals[0] / vals[-1]))
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
                decay=decay,
            )
        )
    return out
