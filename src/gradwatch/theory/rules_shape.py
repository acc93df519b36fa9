"""Shape operations: view, transpose, split, select, expand, cat, ... move elements unchanged.

The rows follow by replaying the operation on the row ids; the moments are unchanged; a
slice of the features (q, k, v out of one projection) is a new independent signal with the
moments of its own weight columns.
"""



from __future__ import annotations

from typing import Any

import numpy as np
import torch

from gradwatch.theory.rules import (
    _isotropic,
    _sum_grads,
    as_field,
    default,
    rid_of,
)
from gradwatch.theory.rules_rows import (
    replay,
)
from gradwatch.theory.trace import schema_info
from gradwatch.theory.values import (
    Const,
    Context,
    Data,
    Field,
    Lazy,
    Probs,
    RowStat,
    Scores,
    Stats,
    Table,
    Unknown,
    Value,
    is_feature_axis,
    present_positions,
    table_rows,
)

MOVEMENT = {
    "view",
    "_unsafe_view",
    "reshape",
    "alias",
    "clone",
    "detach",
    "t",
    "transpose",
    "permute",
    "expand",
    "unsqueeze",
    "squeeze",
    "select",
    "slice",
    "split",
    "split_with_sizes",
    "unbind",
    "chunk",
    "narrow",
    "unflatten",
    "lift_fresh",
    "_to_copy",
    "contiguous",
    "flatten",
    "repeat",
    "_reshape_alias",
    "expand_as",
    "view_as",
    "movedim",
    "swapaxes",
    "unsafe_split",
    "unsafe_chunk",
}
#: Shape operations that take part of a tensor.
SLICING = {
    "select",
    "slice",
    "split",
    "split_with_sizes",
    "unbind",
    "chunk",
    "narrow",
    "unsafe_split",
    "unsafe_chunk",
}
# ------------------------------------------------------------------------ movement
def movement(ctx: Context, op: Any, args: tuple, kwargs: dict) -> Any:
    """Shape operations: rows by replay, moments unchanged, feature slices independent."""
    src = args[0]
    flat_out = op.out if isinstance(op.out, list | tuple) else [op.out]
    if isinstance(src, Unknown):
        return [src for _ in flat_out]
    if op.name == "_to_copy" or op.name == "lift_fresh" or op.name == "contiguous":
        new_rids = [rid_of(src)]
    elif op.name == "cat":
        return cat(ctx, op, args, kwargs)
    else:
        new_rids = None
    if isinstance(src, Const):
        return [Const(t) for t in flat_out]
    if isinstance(src, Table):
        outs = [Table(t.detach(), None, param=src.param) for t in flat_out]
        if src.rid is not None or src.param is not None:
            own = src.rid if src.rid is not None else table_rows(src.value)
            try:
                rids = new_rids or replay(op.func, args, kwargs, lambda v: own if v is src else v)
                rids = rids if isinstance(rids, list | tuple) else [rids]
                for o, r in zip(outs, rids, strict=False):
                    o.rid = r
                ctx.record([src], outs, lambda g, s=src: [_sum_grads(g)])
            except Exception:  # rows cannot be followed: the table gets no gradient
                pass
        return outs
    if isinstance(src, Scores | Probs | RowStat):
        return attention_movement(ctx, op, args, kwargs, src)
    if isinstance(src, Lazy) and op.name not in (
        "detach",
        "alias",
        "clone",
        "_to_copy",
        "lift_fresh",
        "contiguous",
    ):
        dim = _dim_arg(op, args, kwargs)
        slicing = op.name in SLICING
        if slicing and dim is not None and is_feature_axis(src.rid, dim):
            src = as_field(ctx, src)  # a slice of the features: materialise, then slice
            args = (src,) + tuple(args[1:])
    rid = rid_of(src)
    if rid is None:
        return [
            Data(t.detach(), None) if isinstance(src, Data) else Unknown("rows lost")
            for t in flat_out
        ]
    rids = new_rids or replay(
        op.func,
        args,
        kwargs,
        lambda v: rid if v is src else (rid_of(v) if isinstance(v, Value) else v),
    )
    rids = list(rids) if isinstance(rids, list | tuple) else [rids]
    dim = _dim_arg(op, args, kwargs)
    feature_slice = op.name in SLICING and dim is not None and is_feature_axis(rid, dim)
    columns = getattr(src, "_columns", None) if isinstance(src, Field) else None
    fids = None
    if columns is not None:
        try:
            fids = replay(op.func, args, kwargs, lambda v: columns.fid if v is src else v)
            fids = list(fids) if isinstance(fids, list | tuple) else [fids]
        except Exception:  # feature ids cannot follow this operation
            columns = None
    scales: list[float] = []
    outs: list[Value] = []
    for k, (t, r) in enumerate(zip(flat_out, rids, strict=False)):
        if isinstance(src, Data):
            outs.append(Data(t.detach(), r))
        elif isinstance(src, Lazy):  # a view of a lazy function: the same function
            outs.append(
                Lazy(
                    source=src.source,
                    fn=src.fn,
                    rid=r,
                    affine=src.affine,
                    kinks=src.kinks,
                    names=src.names,
                )
            )
        else:
            token = src.token
            stats, scale = src.stats, 1.0
            if feature_slice:
                key = _slice_key(op, args, k)
                token = frozenset({(tok, op.name, key) for tok in src.token})
                if columns is not None:
                    stats, scale = columns.slice_stats(fids[k])
            f = Field(stats=_with_present(ctx, stats, r), rid=r, lineage=src.lineage, token=token)
            if columns is not None and not feature_slice:
                f._columns = columns.moved(fids[k])
            scales.append(scale)
            outs.append(f)
    if isinstance(src, Data | Field):
        if feature_slice:  # parts of the features: directions over the whole set are lost
            # a slice whose columns have their own σw² sends its gradient back weighted so that
            # the projection's backward (which multiplies by the whole matrix's σw²) gives
            # Σ_slices σw²_slice · ‖δ_slice‖²
            sc = scales or [1.0] * len(outs)
            ctx.record(
                [src],
                outs,
                lambda g, sc=sc: [
                    _isotropic(
                        _sum_grads(
                            [
                                None if gg is None else gg.scaled(c)
                                for gg, c in zip(g, sc, strict=False)
                            ]
                        )
                    )
                ],
            )
        else:
            ctx.record([src], outs, lambda g: [_sum_grads(g)])
    return outs


def _with_present(ctx: Context, st: Stats, rid: torch.Tensor) -> Stats:
    pres = present_positions(ctx.space, rid) & st.present
    if np.array_equal(pres, st.present):
        return st
    return Stats(A=st.A, C=st.C, mu=st.mu, present=pres)


def _dim_arg(op: Any, args: tuple, kwargs: dict) -> int | None:
    names = schema_info(op.func)[2]
    if "dim" not in names:
        return None
    i = names.index("dim")
    if i < len(args):
        d = args[i]
    else:
        d = kwargs.get(
            "dim", 0 if op.name in ("split", "split_with_sizes", "chunk", "unbind") else None
        )
    return d if isinstance(d, int) else None


def _slice_key(op: Any, args: tuple, k: int) -> Any:
    return tuple(a for a in args[1:] if isinstance(a, int | float | type(None))) + (k,)


def cat(ctx: Context, op: Any, args: tuple, kwargs: dict) -> Any:
    """Concatenation: of feature blocks of the same rows (independent parts), or actual."""
    parts = list(args[0])
    # empty parts (an empty cache) drop out
    nonempty = [p for p in parts if not (isinstance(p, Value) and _numel(p) == 0)]
    if len(nonempty) == 1 and len(parts) > 1:
        v = nonempty[0]
        if isinstance(v, Data | Field | Lazy):
            if isinstance(v, Lazy):
                v = as_field(ctx, v)
            out = (
                type(v)(**{**v.__dict__}) if isinstance(v, Field) else Data(op.out.detach(), v.rid)
            )
            if isinstance(out, Field):
                out = Field(stats=v.stats, rid=v.rid, lineage=v.lineage, token=v.token)
            ctx.record([v], [out], lambda g: [g[0]])
            return out
    if not any(isinstance(p, Field | Lazy | Data) for p in parts):
        return default(ctx, op, args, kwargs)
    return Unknown("a concatenation of signals (other than an empty cache) is not modelled")


def _numel(v: Value) -> int:
    for attr in ("value", "rid"):
        t = getattr(v, attr, None)
        if isinstance(t, torch.Tensor):
            return t.numel()
    return 1


def attention_movement(ctx, op, args, kwargs, src):
    """Views of scores or probabilities (GPT-2 reshapes them): keep them symbolic."""
    from_shape = tuple(src.scores.shape if isinstance(src, Probs) else getattr(src, "shape", ()))
    out_t = op.out if isinstance(op.out, torch.Tensor) else None
    if out_t is not None and op.name in (
        "view",
        "_unsafe_view",
        "reshape",
        "expand",
        "clone",
        "detach",
        "alias",
        "contiguous",
    ):
        if isinstance(src, Scores | Probs) and out_t.numel() == int(np.prod(from_shape or (0,))):
            return src
    return Unknown(f"aten.{op.name} on attention scores is not modelled")




RULES = {name: movement for name in MOVEMENT}
RULES["cat"] = movement


# ------------------------------------------------------------- shape-only constructors
#: Tensors made in the shape of another, whose values do not depend on it (the noise that
#: dropout fills in place on CPU: ``empty_like(x).bernoulli_(1 - p)``).
LIKE = ("empty_like", "zeros_like", "ones_like", "full_like", "rand_like", "randn_like")


def like(ctx: Context, op: Any, args: tuple, kwargs: dict) -> Any:
    """A tensor shaped like a signal, its values independent of it: a constant."""
    return Const(op.out.detach()) if isinstance(op.out, torch.Tensor) else None


RULES.update(dict.fromkeys(LIKE, like))
