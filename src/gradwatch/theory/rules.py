"""What every mean-field rule shares: moments of a value, signals as functions, scalars.

Each rule takes the values of an operation's inputs (:mod:`~gradwatch.theory.values`) and
returns the values of its outputs, recording on the tape how gradients go back. The rules
live by kind of operation: shape operations (:mod:`~gradwatch.theory.rules_shape`), weight
matrices, embeddings and statistics over features (:mod:`~gradwatch.theory.rules_linear`),
elementwise algebra (:mod:`~gradwatch.theory.rules_pointwise`), norms
(:mod:`~gradwatch.theory.rules_norm`), attention (:mod:`~gradwatch.theory.rules_attention`);
rows through broadcasts in :mod:`~gradwatch.theory.rules_rows`. This module holds what they
share, and :func:`default`, the rule of an operation without one: actual values when no
signal is involved, else :class:`~gradwatch.theory.values.Unknown`.

Signals that are not independent (x + LN(x)) are outside the theory; :func:`independent`
tells: one of them crossed a weight matrix after they parted.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from gradwatch.theory.kernels import lazy_backward, materialize
from gradwatch.theory.trace import schema_info
from gradwatch.theory.values import (
    Const,
    Context,
    Data,
    Field,
    Grad,
    Lazy,
    Probs,
    RowStat,
    Scores,
    Stats,
    Table,
    Unknown,
    Value,
    data_stats,
    features_per_row,
)

SIGNALS = (Field, Lazy)
#: Elementwise operations with a kink (non-smooth point) at fixed places of their input.
KINKS = {
    "relu": (0.0,),
    "leaky_relu": (0.0,),
    "abs": (0.0,),
    "hardswish": (-3.0, 3.0),
    "hardsigmoid": (-3.0, 3.0),
    "elu": (0.0,),
    "celu": (0.0,),
    "selu": (0.0,),
}


# ------------------------------------------------------------------ conversions
def stats_of(ctx: Context, v: Value) -> Stats | None:
    """Moments of a main-space value (materialising a Lazy; actual moments of Data)."""
    if isinstance(v, Field):
        return v.stats
    if isinstance(v, Lazy):
        return as_field(ctx, v).stats
    if isinstance(v, Data) and v.rid is not None:
        if v._stats is None:
            v._stats = data_stats(ctx.space, v.value, v.rid)
        return v._stats
    return None


def as_field(ctx: Context, v: Value) -> Field:
    """A Lazy as a Field, its moments computed once (the tape sends gradients to the source)."""
    if isinstance(v, Field):
        return v
    if isinstance(v, Lazy):
        if getattr(v, "_field", None) is None:
            f = materialize(ctx, v)
            ctx.record([v.source], [f], lambda g, lz=v: [lazy_backward(lz, g[0])])
        return v._field
    if isinstance(v, Data):
        st = stats_of(ctx, v)
        f = Field(stats=st, rid=v.rid)
        v._as_field = f  # type: ignore[attr-defined]
        ctx.record([v], [f], lambda g: [g[0]])
        return f
    raise TypeError(f"not a signal: {type(v).__name__}")


def as_lazy(v: Value) -> Lazy:
    """A Field as the identity function of itself; a Lazy as it is."""
    if isinstance(v, Lazy):
        return v
    assert isinstance(v, Field)
    return Lazy(source=v, fn=lambda u: u, rid=v.rid)


def rid_of(v: Value) -> torch.Tensor | None:
    """The row ids of a value (None where it has none)."""
    return getattr(v, "rid", None)



# -------------------------------------------------------------------- default rule
def _kind_of_actual(args: tuple, kwargs: dict) -> type:
    vals = [a for a in _flat((args, kwargs)) if isinstance(a, Value)]
    if any(isinstance(a, Data) for a in vals):
        return Data
    if any(isinstance(a, Table) for a in vals):
        return Table
    return Const


def _flat(obj: Any):
    if isinstance(obj, list | tuple):
        for o in obj:
            yield from _flat(o)
    elif isinstance(obj, dict):
        for o in obj.values():
            yield from _flat(o)
    else:
        yield obj


def default(ctx: Context, op: Any, args: tuple, kwargs: dict) -> Any:
    """Operations without a rule: actual values when no signal is involved, else Unknown."""
    vals = [a for a in _flat((args, kwargs)) if isinstance(a, Value)]
    unknown = next((a for a in vals if isinstance(a, Unknown)), None)
    if unknown is not None:
        return _outs(op, lambda _t: unknown)
    if any(isinstance(a, Field | Lazy | RowStat | Scores | Probs) for a in vals):
        reason = f"no mean-field rule for the operation aten.{op.name} on a signal"
        return _outs(op, lambda _t: Unknown(reason))
    kind = _kind_of_actual(args, kwargs)
    if kind is Data:
        return _outs(op, lambda t: Data(t.detach(), None))
    if kind is Table:
        return _outs(op, lambda t: Table(t.detach(), None))
    return _outs(op, lambda t: Const(t))


def _outs(op: Any, make: Any) -> list:
    flat = op.out if isinstance(op.out, list | tuple) else [op.out]
    return [make(t) if isinstance(t, torch.Tensor) else None for t in flat]


def _isotropic(g: Grad | None) -> Grad | None:
    return None if g is None else Grad(g.GA, g.GC)


def _sum_grads(gs: list[Grad | None]) -> Grad | None:
    out = None
    for g in gs:
        if g is not None:
            out = g if out is None else out.add(g)
    return out


def _is_scalar(a: Any) -> bool:
    if isinstance(a, int | float | bool):
        return True
    if isinstance(a, Const | Table) and isinstance(a.value, torch.Tensor) and a.value.numel() == 1:
        return True
    return isinstance(a, Const) and isinstance(a.value, int | float)


def _scalar(a: Any) -> Any:
    if isinstance(a, Const | Table):
        v = a.value
        return v.reshape(()) if isinstance(v, torch.Tensor) else v
    return a


def functional(func: Any) -> Any:
    """The out-of-place overload of an in-place operator (``add_.Scalar`` -> ``add.Scalar``)."""
    base = schema_info(func)[0]
    if not base.endswith("_"):
        return func
    packet = getattr(torch.ops.aten, base[:-1], None)
    overload = func._overloadname
    return getattr(packet, overload, None) or getattr(packet, "default", func) if packet else func


def _c(st: Stats) -> np.ndarray:
    return st.C if st.C is not None else st.A * 0.0


def independent(a: Field, b: Field) -> bool:
    """Whether the features of two signals are uncorrelated over the random weights."""
    return (
        bool(a.token) and not (a.token & b.lineage) or bool(b.token) and not (b.token & a.lineage)
    )


def features(v: Value) -> int:
    """Features per row of a value."""
    r = rid_of(v)
    return features_per_row(r) if r is not None else 1
