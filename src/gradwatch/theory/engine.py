"""Interpret a recorded forward pass in mean-field theory: moments forward, gradients back.

:func:`interpret` walks the operations of a :class:`~gradwatch.theory.trace.Trace` in order.
Each operation's rule (:mod:`~gradwatch.theory.rules`, :mod:`~gradwatch.theory.rules_norm`,
:mod:`~gradwatch.theory.rules_attention`) maps the values of its inputs
(:mod:`~gradwatch.theory.values`) to the values of its outputs, and appends to a tape what it
needs to send gradients back. Then the tape is run backward from the model's output, seeded
with a random linear read-out (independent unit-variance gradients at every output element)
or with the output itself (the gradient of ½‖y‖²), and each layer's predicted ‖∂L/∂output‖²
is read off.

Nothing here is fitted: forward moments follow the mean-field recursions (Linear: σw² q +
σb²; elementwise φ: Gaussian integrals; residual sums of independent signals add; norms
divide by the row's scale), and gradients the same maps transposed under the
gradient-independence assumption (Schoenholz et al. 2017).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from gradwatch.theory import (
    rules,
    rules_attention,
    rules_conv,
    rules_linear,
    rules_norm,
    rules_pointwise,
    rules_shape,
)
from gradwatch.theory.trace import Op, Trace
from gradwatch.theory.values import (
    Const,
    Context,
    Data,
    Field,
    Grad,
    Lazy,
    Repartition,
    Space,
    Stats,
    Step,
    Table,
    Unknown,
    Value,
    data_stats,
    features_per_row,
    present_positions,
)

#: The rule of each operation (by ATen name); elementwise operations without one go to
#: :func:`~gradwatch.theory.rules_pointwise.pointwise`, others to
#: :func:`~gradwatch.theory.rules.default`.
RULES = {
    **rules_shape.RULES,
    **rules_linear.RULES,
    **rules_pointwise.RULES,
    **rules_norm.RULES,
    **rules_attention.RULES,
    **rules_conv.RULES,
}

#: Operations that read an image-like input (N, C, *spatial): its channels are the features.
CONVOLUTIONS = ("convolution", "_convolution", "mkldnn_convolution")

#: Operations that mix the rows of different examples (the cross-example moments C are
#: tracked only when the model has one).
BATCH_MIXING = ("native_batch_norm", "_native_batch_norm_legit", "batch_norm")


@dataclass
class Interpretation:
    """The result of :func:`interpret`.

    Attributes:
        space: the rows (examples and positions) of the input.
        values: id(tensor) -> its value.
        grads: id(value) -> its gradient.
        output: the value of the model's output.
        reason: why the prediction is incomplete ("" when it is not).
        weights: per weight matrix (id of the parameter): fan_in, sigma_w2, sigma_b2.
    """

    space: Space
    values: dict[int, Value]
    grads: dict[int, Grad]
    output: Value
    ctx: Context
    reason: str = ""
    #: per layer name: predicted ‖δ‖², forward q and weight gradient computed outside the
    #: tape (a chain of identical copies, :mod:`~gradwatch.theory.tied`)
    layers: dict[str, dict[str, float]] = field(default_factory=dict)

    @property
    def weights(self) -> dict[int, dict[str, float]]:
        """Per weight matrix (id of the parameter): fan_in, sigma_w2, sigma_b2."""
        return self.ctx.weights

    def value_of(self, t: Any) -> Value | None:
        """The value of a tensor of the trace (the first tensor of a tuple/list)."""
        t = first_tensor(t)
        return None if t is None else self.values.get(id(t))

    def grad_norm2(self, v: Value | None) -> float:
        """Predicted ‖∂L/∂v‖² over the whole batch (NaN when unknown)."""
        if v is None or isinstance(v, Unknown | Const):
            return float("nan")
        g = self.grads.get(id(v))
        if g is None:
            return 0.0
        if isinstance(v, Table):
            return float(np.trace(g.GA))
        return float(self.space.B * np.trace(g.GA))

    def forward_q(self, v: Value | None) -> float:
        """Mean square per feature of a main-space value (NaN when not known)."""
        st = rules.stats_of(self.ctx, v) if isinstance(v, Data | Field | Lazy) else None
        if st is None:
            return float("nan")
        d = np.diag(st.A)[st.present]
        return float(d.mean()) if d.size else float("nan")


def first_tensor(obj: Any) -> torch.Tensor | None:
    """The first tensor of ``obj`` (itself, or in a tuple/list/mapping's values)."""
    if isinstance(obj, torch.Tensor):
        return obj
    if isinstance(obj, list | tuple):
        for o in obj:
            t = first_tensor(o)
            if t is not None:
                return t
    if isinstance(obj, dict) or hasattr(obj, "values"):
        try:
            items = list(obj.values())
        except Exception:  # not a mapping after all
            return None
        if hasattr(obj, "get") and isinstance(obj.get("logits"), torch.Tensor):
            return obj["logits"]
        for o in items:
            t = first_tensor(o)
            if t is not None:
                return t
    return None


def input_space(
    inputs: tuple[torch.Tensor, ...], batch_mixing: bool, image: bool = False
) -> tuple[Space, torch.Tensor]:
    """Rows of the first input: examples along axis 0, positions over the other row axes.

    An ``image`` (N, C, *spatial), read first by a convolution, has its channels (axis 1) as
    features and its spatial positions as the positions of each example.
    """
    x = inputs[0]
    if image and x.is_floating_point() and x.dim() >= 3:
        B, spatial = int(x.shape[0]), tuple(x.shape[2:])
        T = int(np.prod(spatial))
        r = np.arange(B * T)
        space = Space(B=B, T=T, ex=r // T, pos=r % T, track_cross=batch_mixing)
        rid = torch.arange(B * T).reshape(B, 1, *spatial).expand(x.shape)
        return space, rid
    if x.is_floating_point() or x.is_complex():
        lead = x.shape[:-1] if x.dim() >= 2 else (x.shape[0],) if x.dim() == 1 else ()
    else:
        lead = x.shape
    n_rows = int(np.prod(lead)) if len(lead) else 1
    B = int(lead[0]) if len(lead) else 1
    T = max(n_rows // max(B, 1), 1)
    r = np.arange(n_rows)
    space = Space(B=B, T=T, ex=r // T, pos=r % T, track_cross=batch_mixing)
    if x.is_floating_point() and x.dim() >= 2:
        rid = torch.arange(n_rows).reshape(lead).unsqueeze(-1).expand(x.shape)
    else:
        rid = torch.arange(n_rows).reshape(x.shape)
    return space, rid


def interpret(
    trace: Trace,
    readout: Any = "random",
    samples: int = 512,
    seed: int = 0,
    source: Stats | None = None,
    splice: Any = None,
) -> Interpretation:
    """Run the trace through the mean-field rules, forward then backward.

    Args:
        trace: a recorded forward pass.
        readout: "random" (independent unit gradients at the output: a random linear
            read-out), "output" (δ = y: the gradient of ½‖y‖², ``gw.check``'s default),
            a tensor of the output's shape, ∂L/∂output itself (its second moments, within
            and across examples, seed the backward pass), a
            :class:`~gradwatch.theory.values.Grad` (those moments given), or None (forward
            moments only).
        samples: draws for the attention moments (Gaussian expectations over the scores).
        seed: seed of those draws.
        source: the moments of the first input, given instead of read from its values (it
            is then a signal that crossed weight matrices of its own; rows as the tensor's).
        splice: an object whose ``on_value(tensor, value, ctx, values)`` may replace an
            operation's output value, and whose ``start`` (a tape index, or None) and
            ``inject(ctx, grads)`` add gradients when the backward pass reaches ``start``
            (:mod:`~gradwatch.theory.tied` computes a chain of identical copies this way).

    Returns:
        the :class:`Interpretation`.
    """
    given = isinstance(readout, torch.Tensor)
    mixing = given or any(op.name in BATCH_MIXING for op in trace.ops)
    main = trace.inputs[0]
    image = any(
        op.name in CONVOLUTIONS and op.args and op.args[0] is main for op in trace.ops
    )
    space, rid = input_space(trace.inputs, mixing, image)
    for _ in range(3):
        try:
            return _run(trace, space, rid, readout, samples, seed, source, splice)
        except Repartition as again:
            space = again.space
    raise RuntimeError("the rows of the input could not be partitioned into examples")


def _run(trace, space, rid, readout, samples, seed, source=None, splice=None) -> Interpretation:
    ctx = Context(space=space, seed=seed, samples=samples)
    values: dict[int, Value] = {}
    tape = ctx.tape
    main = trace.inputs[0]
    if source is not None:
        values[id(main)] = Field(source, rid, frozenset({"source"}), frozenset({"source"}))
    else:
        values[id(main)] = Data(main.detach(), rid)
    if splice is not None:
        values[id(main)] = splice.on_value(main, values[id(main)], ctx, values)
    for extra in trace.inputs[1:]:
        values[id(extra)] = Const(extra)

    def value(t: Any) -> Any:
        if isinstance(t, torch.Tensor):
            v = values.get(id(t))
            if v is None:
                if id(t) in trace.params:
                    v = Table(t.detach(), None, param=id(t))
                else:
                    v = Const(t)
                values[id(t)] = v
            return v
        if isinstance(t, list | tuple):
            return type(t)(value(o) for o in t)
        return t

    for op in trace.ops:
        args = tuple(value(a) for a in op.args)
        kwargs = {k: value(v) for k, v in op.kwargs.items()}
        outs = _apply(ctx, op, args, kwargs)
        flat = op.out if isinstance(op.out, list | tuple) else [op.out]
        if not isinstance(outs, list):
            outs = [outs]
        for t, v in zip(flat, outs, strict=False):
            if isinstance(t, torch.Tensor) and v is not None:
                if not t.requires_grad and isinstance(v, Lazy | Field | Data):
                    # detached, or computed under no_grad: no gradient goes back through it
                    if isinstance(v, Lazy):
                        v = rules.as_field(ctx, v)
                    v._detached = True  # type: ignore[attr-defined]
                if splice is not None:
                    v = splice.on_value(t, v, ctx, values)
                values[id(t)] = v
    out_t = first_tensor(trace.output)
    out_v = values.get(id(out_t)) if out_t is not None else None
    interp = Interpretation(space=space, values=values, grads={}, output=out_v, ctx=ctx)
    if out_v is None or isinstance(out_v, Const | Table):
        interp.reason = "the model's output does not depend on its input"
        return interp
    if isinstance(out_v, Unknown):
        interp.reason = out_v.reason
        return interp
    if readout is None:  # moments only
        return interp
    _backward(ctx, interp, tape, out_v, readout, splice)
    return interp


def _apply(ctx: Context, op: Op, args: tuple, kwargs: dict) -> Any:
    name = op.name
    rule = RULES.get(name)
    if rule is not None:
        return rule(ctx, op, args, kwargs)
    if torch.Tag.pointwise in op.func.tags:
        return rules_pointwise.pointwise(ctx, op, args, kwargs)
    return rules.default(ctx, op, args, kwargs)


def _backward(
    ctx: Context,
    interp: Interpretation,
    tape: list[Step],
    out_v: Value,
    readout: Any,
    splice: Any = None,
) -> None:
    space = interp.space
    grads = interp.grads
    if isinstance(out_v, Lazy):
        out_v = rules.as_field(ctx, out_v)
    rid = getattr(out_v, "rid", None)
    n = features_per_row(rid) if rid is not None else 1
    present = present_positions(space, rid) if rid is not None else np.ones(space.T, bool)
    if isinstance(readout, Grad):
        ga, gc = readout.GA, readout.GC
    elif isinstance(readout, torch.Tensor):
        st = data_stats(space, readout.detach().to(torch.float64), rid)
        ga = st.A * n
        gc = st.C * n if st.C is not None else np.zeros_like(ga)
    elif readout == "output":
        st = rules.stats_of(ctx, out_v)
        ga = st.A * n
        gc = st.C * n if st.C is not None else (np.zeros_like(ga) if space.track_cross else None)
    else:
        ga = np.diag(present.astype(float)) * n
        gc = np.zeros_like(ga) if space.track_cross else None
    grads[id(out_v)] = readout if isinstance(readout, Grad) else Grad(ga, gc)
    if id(out_v) != id(interp.output):
        grads[id(interp.output)] = grads[id(out_v)]
    start = getattr(splice, "start", None)
    for index in range(len(tape) - 1, -1, -1):
        if start is not None and index < start:
            splice.inject(ctx, grads)
            start = None
        step = tape[index]
        g_out = [None if getattr(v, "_detached", False) else grads.get(id(v)) for v in step.outputs]
        if all(g is None for g in g_out):
            continue
        g_in = step.backward(g_out)
        for v, g in zip(step.inputs, g_in, strict=True):
            if g is None or v is None or isinstance(v, Const | Unknown):
                continue
            prev = grads.get(id(v))
            grads[id(v)] = g if prev is None else prev.add(g)
    if start is not None:
        splice.inject(ctx, grads)
