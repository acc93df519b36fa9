"""Mean-field rules for shape operations, weight matrices, embeddings and elementwise algebra.

Each rule takes the values of an operation's inputs (:mod:`~gradwatch.theory.values`) and
returns the values of its outputs, recording on the tape how gradients go back. The rules,
with W of fan-in n and σw² = n·Var(W), b the bias (actual values):

- **shape operations** (view, transpose, split, select, expand, ...) move elements: the rows
  follow by replaying the operation on the row ids; moments are unchanged; a slice of the
  features (q, k, v out of one projection) is a new independent signal;
- **weight matrix** (``addmm``, ``mm``, ``bmm`` with a parameter): A' = σw² A + mean(b²),
  mu' = mean(b); back: ΣGA' = σw² GA (Poole et al. 2016; He et al. 2015);
- **embedding** lookup: the actual rows (the input is known, not random);
- **elementwise** φ of one signal: a :class:`~gradwatch.theory.values.Lazy` function, whose
  moments are Gaussian integrals (:mod:`~gradwatch.theory.kernels`);
- **sum of independent signals** (a residual connection x + f(x), token + position
  embeddings): A' = A_x + A_f + μ_x μ_fᵀ + μ_f μ_xᵀ; the gradient goes to both unchanged
  (Yang & Schoenholz 2017: q_{l+1} = q_l + V_branch(q_l), and ‖δ_l‖² = ‖δ_{l+1}‖²(1 + χ_f));
- **product of independent signals** (gating, a dropout mask, a norm's γ): A' = A_x ⊙ A_y.

Signals that are not independent (x + LN(x)) are outside the theory (:class:`Unknown`).
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
    Space,
    Stats,
    Table,
    Unknown,
    Value,
    data_stats,
    features_per_row,
    is_feature_axis,
    present_positions,
    table_rows,
)

SIGNALS = (Field, Lazy)
#: Operations that move elements without changing them (rows follow by replay).
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


def replay(func: Any, args: tuple, kwargs: dict, which: Any) -> Any:
    """Run a shape operation on row-id tensors: ``which(value)`` gives a tensor's ids."""

    def sub(a):
        if isinstance(a, Value):
            r = which(a)
            return r.contiguous() if isinstance(r, torch.Tensor) else r
        if isinstance(a, list | tuple):
            return type(a)(sub(x) for x in a)
        return a

    name = schema_info(func)[0]
    if name in ("view", "_unsafe_view", "_reshape_alias"):
        func = torch.ops.aten.reshape.default
        args = args[:2]
    skip = ("dtype", "device", "layout", "memory_format", "pin_memory", "non_blocking")
    return func(*sub(args), **{k: sub(v) for k, v in kwargs.items() if k not in skip})


def rid_of(v: Value) -> torch.Tensor | None:
    """The row ids of a value (None where it has none)."""
    return getattr(v, "rid", None)


# ------------------------------------------------------------------------ row maps
def row_map(space: Space, out_rid: torch.Tensor, op_rid: torch.Tensor, table: bool) -> np.ndarray:
    """For each position t of the output, the operand row it reads (-1: none).

    Raises:
        ValueError: one output position reads several operand rows, or another example.
    """
    op_rid = op_rid.expand(out_rid.shape) if op_rid.shape != out_rid.shape else op_rid
    pairs = torch.unique(torch.stack([out_rid.reshape(-1), op_rid.reshape(-1)]), dim=1).numpy()
    m = np.full(space.T, -1)
    for r_out, r_op in pairs.T:
        t = space.pos[r_out]
        target = r_op if table else space.pos[r_op]
        if not table and space.ex[r_op] != space.ex[r_out]:
            raise ValueError("an elementwise operation pairs rows of different examples")
        if m[t] not in (-1, target):
            raise ValueError("an elementwise operation pairs one position with several rows")
        m[t] = target
    return m


def lifted_stats(ctx: Context, v: Value, out_rid: torch.Tensor) -> Stats:
    """Moments of an operand in the rows of the output (broadcast included)."""
    space = ctx.space
    rid = rid_of(v)
    if isinstance(v, Table | Const) or rid is None:
        val = torch.as_tensor(
            v.value if isinstance(v, Table | Const | Data) else 0.0, dtype=torch.float64
        )
        return data_stats(space, val.expand(out_rid.shape), out_rid)
    st = stats_of(ctx, v)
    if torch.equal(rid.expand(out_rid.shape) if rid.shape != out_rid.shape else rid, out_rid):
        return st
    idx = row_map(space, out_rid, rid, table=False)
    ok = idx >= 0
    sel = np.flatnonzero(ok)
    A = np.zeros_like(st.A)
    A[np.ix_(sel, sel)] = st.A[np.ix_(idx[sel], idx[sel])]
    C = None
    if st.C is not None:
        C = np.zeros_like(st.C)
        C[np.ix_(sel, sel)] = st.C[np.ix_(idx[sel], idx[sel])]
    mu = np.zeros_like(st.mu)
    mu[sel] = st.mu[idx[sel]]
    return Stats(A=A, C=C, mu=mu, present=ok & st.present[np.maximum(idx, 0)])


def unlift(ctx: Context, v: Value, out_rid: torch.Tensor, g: Grad) -> Grad:
    """The gradient of an operand from the gradient in the output's rows (sums broadcasts)."""
    space = ctx.space
    rid = rid_of(v)
    if isinstance(v, Table):
        own = table_rows(v.value) if rid is None else rid
        own = own.expand(out_rid.shape) if own.shape != out_rid.shape else own
        pairs = torch.unique(torch.stack([out_rid.reshape(-1), own.reshape(-1)]), dim=1).numpy()
        r_main, r_tab = pairs
        n_tab = int(own.max()) + 1 if own.numel() else 1
        # the main rows' gradient covariance: GA within an example, GC across
        t = space.pos[r_main]
        same = space.ex[r_main][:, None] == space.ex[r_main][None, :]
        full = np.where(
            same, g.GA[np.ix_(t, t)], (g.GC if g.GC is not None else 0 * g.GA)[np.ix_(t, t)]
        )
        ind = np.zeros((n_tab, len(r_main)))
        ind[r_tab, np.arange(len(r_main))] = 1.0
        return Grad(ind @ full @ ind.T)
    if rid is None:
        return Grad(np.zeros_like(g.GA))
    if torch.equal(rid.expand(out_rid.shape) if rid.shape != out_rid.shape else rid, out_rid):
        return g
    idx = row_map(space, out_rid, rid, table=False)
    sel = np.flatnonzero(idx >= 0)
    ga = np.zeros_like(g.GA)
    np.add.at(ga, (idx[sel][:, None], idx[sel][None, :]), g.GA[np.ix_(sel, sel)])
    gc = None
    if g.GC is not None:
        gc = np.zeros_like(g.GC)
        np.add.at(gc, (idx[sel][:, None], idx[sel][None, :]), g.GC[np.ix_(sel, sel)])
    return Grad(ga, gc)


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


def _isotropic(g: Grad | None) -> Grad | None:
    return None if g is None else Grad(g.GA, g.GC)


def _sum_grads(gs: list[Grad | None]) -> Grad | None:
    out = None
    for g in gs:
        if g is not None:
            out = g if out is None else out.add(g)
    return out


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


# ------------------------------------------------------------------ weight matrices
def _matrix(v: Value) -> torch.Tensor | None:
    """The actual tensor of a parameter-derived value (a weight matrix), else None."""
    if isinstance(v, Table):
        return v.value
    return None


def _weight_info(
    ctx: Context, w: torch.Tensor, fan_in: int, bias: torch.Tensor | None, key: int
) -> float:
    wd = w.detach().to(torch.float64)
    sw2 = (
        float(fan_in * wd.var(unbiased=False))
        if wd.numel() > 1
        else float(fan_in * wd.pow(2).mean())
    )
    sb2 = (
        float(bias.detach().to(torch.float64).var(unbiased=False))
        if bias is not None and bias.numel() > 1
        else 0.0
    )
    ctx.weights.setdefault(key, {"fan_in": float(fan_in), "sigma_w2": sw2, "sigma_b2": sb2})
    return sw2


def _base_param(v: Value) -> int:
    return getattr(v, "param", None) or id(getattr(v, "value", v))


def matmul(ctx: Context, op: Any, args: tuple, kwargs: dict) -> Any:
    """``addmm(b, x, W)``, ``mm(x, W)``, ``bmm``: a weight matrix acting on features."""
    name = op.name
    if name == "addmm":
        bias, x, w = args[0], args[1], args[2]
        beta, alpha = kwargs.get("beta", 1), kwargs.get("alpha", 1)
    elif name in ("mm", "bmm", "matmul"):
        bias, (x, w), beta, alpha = None, args[:2], 0, 1
    else:  # baddbmm
        bias, x, w = args[0], args[1], args[2]
        beta, alpha = kwargs.get("beta", 1), kwargs.get("alpha", 1)
    if any(isinstance(a, Unknown) for a in (x, w)):
        return next(a for a in (x, w) if isinstance(a, Unknown))
    if isinstance(x, Lazy | Field) and isinstance(w, Lazy | Field) or isinstance(x, Probs | Scores):
        from gradwatch.theory import rules_attention

        return rules_attention.product(ctx, op, x, w)
    W = _matrix(w)
    left = False
    if W is None and _matrix(x) is not None and isinstance(w, Field | Lazy | Data):
        W, x, left = _matrix(x), w, True  # W @ x: the features are x's first matrix axis
    if W is None or not isinstance(x, Field | Lazy | Data):
        return default(ctx, op, args, kwargs)
    if isinstance(x, Data) and x.rid is None:
        return Unknown("a matrix product of an input-dependent tensor whose rows are lost")
    fx = as_field(ctx, x) if isinstance(x, Lazy) else x
    rid = fx.rid
    contract = rid.dim() - 2 if left else rid.dim() - 1
    if not is_feature_axis(rid, contract):
        return Unknown("a matrix product that mixes positions (not a weight acting on features)")
    fan_in = W.shape[-1] if left else W.shape[-2]
    b = (
        bias.value
        if isinstance(bias, Table | Const) and isinstance(bias.value, torch.Tensor)
        else None
    )
    wv = w if not left else (args[1] if name == "addmm" else args[0])
    key = _base_param(wv)
    sw2 = _weight_info(ctx, W, fan_in, b, key)
    ctx.uses.append((key, W))
    sw2 *= float(alpha) ** 2
    out_t = op.out
    new_rid = rid.narrow(contract, 0, 1).expand_as(out_t) if out_t.dim() == rid.dim() else None
    if new_rid is None:
        return Unknown("a matrix product whose output rows cannot be followed")
    st = stats_of(ctx, fx)
    bb = float(beta) * b.detach().to(torch.float64) if b is not None and beta else None
    b2 = float((bb * bb).mean()) if bb is not None else 0.0
    bm = float(bb.mean()) if bb is not None else 0.0
    A = sw2 * st.A + b2
    C = sw2 * st.C + b2 if st.C is not None else None
    mu = np.full_like(st.mu, bm)
    lineage = getattr(fx, "lineage", frozenset()) | {key}
    out = Field(
        stats=Stats(A=A, C=C, mu=mu, present=st.present.copy()),
        rid=new_rid,
        lineage=lineage,
        token=frozenset({key}),
    )
    if not left and out_t.dim() >= 1:
        # which output feature each element is: a slice of them (q, k, v of one projection)
        # gets the moments of its own columns of W
        fid = torch.arange(out_t.shape[-1]).expand(out_t.shape)
        out._columns = Columns(W.detach().to(torch.float64) * float(alpha), bb, st, sw2, fid)
    space = ctx.space
    with_bias = bb is not None

    def backward(g):
        # ∂L/∂W = Σ_rows δ_r x_rᵀ: E‖∂L/∂W‖² = Σ_{r,r'} E[δ_r·δ_r'] E[x_r·x_r'] (δ independent
        # of x), and the bias's Σ_r δ_r adds Σ_{r,r'} E[δ_r·δ_r']
        gy = g[0]
        B = space.B
        gc = gy.GC if gy.GC is not None else 0.0
        cx = st.C if st.C is not None else 0.0
        wg = fan_in * (B * float(np.sum(gy.GA * st.A)) + B * (B - 1) * float(np.sum(gc * cx)))
        if with_bias:
            wg += B * float(np.sum(gy.GA)) + B * (B - 1) * float(np.sum(gc))
        ctx.weight_grads[key] = ctx.weight_grads.get(key, 0.0) + wg
        return [gy.scaled(sw2)]

    ctx.record([fx], [out], backward)
    return out


class Columns:
    """A projection's weight columns, its bias, its input's moments: for feature slices."""

    def __init__(self, W, bias, xstats, sw2, fid):
        self.W, self.bias, self.xstats, self.sw2, self.fid = W, bias, xstats, sw2, fid

    def moved(self, fid: torch.Tensor) -> Columns:
        """The same columns, with the feature ids of a moved tensor."""
        return Columns(self.W, self.bias, self.xstats, self.sw2, fid)

    def slice_stats(self, fid: torch.Tensor) -> tuple[Stats, float]:
        """Moments of the features in ``fid``, and their σw² over the whole matrix's."""
        feats = torch.unique(fid)
        w = self.W[:, feats]
        sw2 = self.W.shape[0] * float(w.var(unbiased=False)) if w.numel() > 1 else self.sw2
        b2 = bm = 0.0
        if self.bias is not None:
            bs = self.bias[feats]
            b2, bm = float((bs * bs).mean()), float(bs.mean())
        st = self.xstats
        A = sw2 * st.A + b2
        C = sw2 * st.C + b2 if st.C is not None else None
        stats = Stats(A=A, C=C, mu=np.full_like(st.mu, bm), present=st.present.copy())
        return stats, (sw2 / self.sw2 if self.sw2 > 0 else 1.0)


def embedding(ctx: Context, op: Any, args: tuple, kwargs: dict) -> Any:
    """A lookup of rows of a table: actual values (the indices are the input)."""
    idx = args[1]
    out_t = op.out
    if isinstance(idx, Data) and idx.rid is not None:
        return Data(out_t.detach(), idx.rid.unsqueeze(-1).expand(out_t.shape))
    if isinstance(idx, Const | Table):
        return Table(out_t.detach(), table_rows(out_t))
    if isinstance(idx, Unknown):
        return idx
    return Unknown("an embedding looked up at indices computed from signals")


# ------------------------------------------------------------------------ pointwise
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


def pointwise(ctx: Context, op: Any, args: tuple, kwargs: dict) -> Any:
    """Elementwise operations (``torch.Tag.pointwise``): compose, add or multiply signals."""
    vals = [a for a in _flat((args, kwargs)) if isinstance(a, Value)]
    unknown = next((a for a in vals if isinstance(a, Unknown)), None)
    if unknown is not None:
        return unknown
    if any(isinstance(a, Scores | Probs) for a in vals):
        from gradwatch.theory import rules_attention

        return rules_attention.pointwise(ctx, op, args, kwargs)
    if any(isinstance(a, RowStat) for a in vals):
        from gradwatch.theory import rules_norm

        return rules_norm.pointwise(ctx, op, args, kwargs)
    signals = [a for a in vals if isinstance(a, Field | Lazy)]
    if not signals:
        return actual_pointwise(ctx, op, args, kwargs)
    sources = {id(as_lazy(a).source) for a in signals}
    others = [a for a in vals if not isinstance(a, Field | Lazy) and not _is_scalar(a)]
    if len(sources) == 1 and not others:
        return compose(op, args, kwargs, signals)
    name = op.name.rstrip("_")
    if name in ("add", "sub", "mul", "div") and len(vals) <= 2:
        return binary(ctx, op, args, kwargs)
    if len(sources) == 1:
        return Unknown(
            f"an elementwise function with a parameter or constant per feature (aten.{op.name}) "
            "is not modelled"
        )
    return Unknown(f"aten.{op.name} of several different signals is not modelled")


def functional(func: Any) -> Any:
    """The out-of-place overload of an in-place operator (``add_.Scalar`` -> ``add.Scalar``)."""
    base = schema_info(func)[0]
    if not base.endswith("_"):
        return func
    packet = getattr(torch.ops.aten, base[:-1], None)
    overload = func._overloadname
    return getattr(packet, overload, None) or getattr(packet, "default", func) if packet else func


def compose(op: Any, args: tuple, kwargs: dict, signals: list) -> Lazy:
    """One more elementwise function of the same source: a new Lazy."""
    lazies = [as_lazy(s) for s in signals]
    src = lazies[0].source
    func = functional(op.func)

    def sub(a, u):
        if isinstance(a, Field | Lazy):
            return as_lazy(a).fn(u)
        if isinstance(a, Const | Table):
            return (
                _scalar(a).to(torch.float64) if isinstance(_scalar(a), torch.Tensor) else _scalar(a)
            )
        return a

    def fn(u, _a=args, _k=kwargs):
        return func(*[sub(a, u) for a in _a], **{k: sub(v, u) for k, v in _k.items()})
    affine, kinks = _affine_and_kinks(op, args, kwargs, lazies)
    rid = _broadcast_rid([rid_of(a) for a in signals], op.out)
    names = tuple(dict.fromkeys(sum((lz.names for lz in lazies), ()) + (op.name,)))
    return Lazy(source=src, fn=fn, rid=rid, affine=affine, kinks=kinks, names=names)


def _broadcast_rid(rids: list, out: torch.Tensor) -> torch.Tensor:
    r = rids[0]
    return r.expand(out.shape) if tuple(r.shape) != tuple(out.shape) else r


def _affine_and_kinks(op, args, kwargs, lazies) -> tuple[Any, Any]:
    name = op.name.rstrip("_")
    base = lazies[0]
    scalars = [_scalar(a) for a in args[1:] if _is_scalar(a)]
    if len(lazies) == 1 and base.affine is not None:
        a, b = base.affine
        if name in ("mul",) and scalars and isinstance(args[0], Field | Lazy):
            s = float(scalars[0])
            return (a * s, b * s), tuple(base.kinks) if base.kinks is not None else None
        if name == "div" and scalars and isinstance(args[0], Field | Lazy):
            s = float(scalars[0])
            return (a / s, b / s), base.kinks
        if name in ("add", "sub") and scalars and isinstance(args[0], Field | Lazy):
            s = float(scalars[0]) * float(kwargs.get("alpha", 1)) * (-1 if name == "sub" else 1)
            return (a, b + s), base.kinks
        if name == "neg":
            return (-a, -b), base.kinks
        if name in KINKS or name in ("hardtanh", "clamp", "threshold"):
            pts = KINKS.get(name)
            if name in ("hardtanh", "clamp"):
                pts = tuple(float(x) for x in args[1:3] if isinstance(x, int | float))
            if name == "threshold":
                pts = (float(args[1]),)
            ks = tuple(((k - b) / a) for k in pts) if a else ()
            return None, tuple(base.kinks or ()) + ks
        return None, base.kinks
    if name in KINKS or name in ("hardtanh", "clamp", "threshold"):
        return None, None  # a kink after a nonlinear function: place unknown
    kinks = (
        None
        if any(lz.kinks is None for lz in lazies)
        else tuple(sum((tuple(lz.kinks) for lz in lazies), ()))
    )
    return None, kinks


def binary(ctx: Context, op: Any, args: tuple, kwargs: dict) -> Any:
    """Sum, difference or product of a signal and another value (independent of it)."""
    name = op.name.rstrip("_")
    a, b = args[0], args[1]
    out_t = op.out
    sig = a if isinstance(a, Field | Lazy) else b
    out_rid = _broadcast_rid([rid_of(sig)], out_t)
    for other in (a, b):
        r = rid_of(other)
        if isinstance(other, Field | Lazy | Data) and r is not None and r.shape != out_t.shape:
            try:
                r.expand(out_t.shape)
            except RuntimeError:
                out_rid = _broadcast_rid([r], out_t)
    fa = as_field(ctx, a) if isinstance(a, Lazy) else a
    fb = as_field(ctx, b) if isinstance(b, Lazy) else b
    if isinstance(fa, Field) and isinstance(fb, Field) and not independent(fa, fb):
        return Unknown(
            f"aten.{op.name} of two signals that are not independent (neither crossed a weight "
            "matrix after they parted)"
        )
    if name == "div":
        if not isinstance(fa, Field) or isinstance(fb, Field):
            return Unknown("a division by a signal is not modelled")
        inv = (
            Const(1.0 / _scalar(fb)) if _is_scalar(fb) else Const(1.0 / fb.value.to(torch.float64))
        )
        fb, name = inv, "mul"
    try:
        sa = _operand_stats(ctx, fa, out_rid)
        sb = _operand_stats(ctx, fb, out_rid)
    except ValueError as exc:
        return Unknown(str(exc))
    present = sa.present & sb.present
    cross = sa.C is not None or sb.C is not None
    if name in ("add", "sub"):
        s = float(
            kwargs.get(
                "alpha", args[2] if len(args) > 2 and isinstance(args[2], int | float) else 1
            )
        )
        mm = np.outer(sa.mu, sb.mu)
        sgn = -1.0 if name == "sub" else 1.0
        A = sa.A + s * s * sb.A + sgn * s * (mm + mm.T)
        C = None
        if cross:
            C = _c(sa) + s * s * _c(sb) + sgn * s * (mm + mm.T)
        mu = sa.mu + sgn * s * sb.mu
        scale_b = s * s
        # the gradient reaches both operands unchanged; its energy along an operand's own
        # direction follows from the overlap of that direction with the sum's, cos² = q_op/q
        q_out = np.diag(A)[present].mean() if present.any() else 1.0
        c2a = float(np.clip(np.diag(sa.A)[present].mean() / q_out, 0, 1)) if q_out > 0 else 1.0
        c2b = (
            float(np.clip(s * s * np.diag(sb.A)[present].mean() / q_out, 0, 1))
            if q_out > 0
            else 1.0
        )

        def back_a(g):
            return Grad(g.GA, g.GC, ones=g.ones, own=c2a * g.own + (1 - c2a))

        def back_b(g):
            return Grad(
                g.GA * scale_b,
                g.GC * scale_b if g.GC is not None else None,
                ones=g.ones,
                own=c2b * g.own + (1 - c2b),
            )
    else:  # mul
        A = sa.A * sb.A
        C = _c(sa) * _c(sb) if cross else None
        mu = sa.mu * sb.mu
        back_a = lambda g: Grad(g.GA * sb.A, g.GC * _c(sb) if g.GC is not None else None)  # noqa: E731
        back_b = lambda g: Grad(g.GA * sa.A, g.GC * _c(sa) if g.GC is not None else None)  # noqa: E731
    lineage = getattr(fa, "lineage", frozenset()) | getattr(fb, "lineage", frozenset())
    token = getattr(fa, "token", frozenset()) | getattr(fb, "token", frozenset())
    out = Field(
        stats=Stats(A=A, C=C, mu=mu, present=present), rid=out_rid, lineage=lineage, token=token
    )
    ins, backs = [], []
    for operand, back in ((fa, back_a), (fb, back_b)):
        if isinstance(operand, Field | Data | Table):
            ins.append(operand)
            backs.append(back)

    def backward(g, ins=ins, backs=backs):
        res = []
        for operand, back in zip(ins, backs, strict=True):
            gg = back(g[0])
            res.append(
                unlift(ctx, operand, out_rid, gg)
                if not isinstance(operand, Field)
                or operand.rid.shape != out_rid.shape
                or not torch.equal(operand.rid, out_rid)
                else gg
            )
        return res

    ctx.record(ins, [out], backward)
    if name in ("add", "sub"):
        _keep_columns(out, fa, fb, op, s if name == "add" else -s)
    return out


def _keep_columns(out: Field, fa: Any, fb: Any, op: Any, s: float) -> None:
    """A projection plus a bias vector (``mm`` then ``add``) is still a projection."""
    sig, other = (fa, fb) if isinstance(fa, Field) else (fb, fa)
    columns = getattr(sig, "_columns", None)
    if columns is None or isinstance(other, Field | Data) or out.rid.shape != sig.rid.shape:
        return
    n = columns.W.shape[1]
    if _is_scalar(other):
        vec = torch.full((n,), float(_scalar(other)), dtype=torch.float64)
    else:
        full = torch.as_tensor(other.value, dtype=torch.float64).expand(op.out.shape)
        vec = torch.zeros(n, dtype=torch.float64)
        vec[columns.fid.reshape(-1)] = full.reshape(-1)
        back = vec[columns.fid]
        if not torch.allclose(back, full):  # not one value per feature: not a bias
            return
    bias = s * vec if columns.bias is None else columns.bias + s * vec
    out._columns = Columns(columns.W, bias, columns.xstats, columns.sw2, columns.fid)


def _c(st: Stats) -> np.ndarray:
    return st.C if st.C is not None else st.A * 0.0


def _operand_stats(ctx: Context, v: Any, out_rid: torch.Tensor) -> Stats:
    if _is_scalar(v):
        s = float(_scalar(v))
        T = ctx.space.T
        full = np.full((T, T), s * s)
        return Stats(
            A=full,
            C=full.copy() if ctx.space.track_cross else None,
            mu=np.full(T, s),
            present=np.ones(T, bool),
        )
    return lifted_stats(ctx, v, out_rid)


def independent(a: Field, b: Field) -> bool:
    """Whether the features of two signals are uncorrelated over the random weights."""
    return (
        bool(a.token) and not (a.token & b.lineage) or bool(b.token) and not (b.token & a.lineage)
    )


def actual_pointwise(ctx: Context, op: Any, args: tuple, kwargs: dict) -> Any:
    """Elementwise operations on known tensors: actual values, gradients through actual slopes."""
    kind = _kind_of_actual(args, kwargs)
    out_t = op.out
    if kind is Const:
        return Const(out_t)
    if kind is Table:
        return Table(out_t.detach(), None)
    datas = [a for a in args if isinstance(a, Data | Table)]
    main = [a for a in datas if isinstance(a, Data) and a.rid is not None]
    if not main:
        return Data(out_t.detach(), None)
    out_rid = _broadcast_rid([main[0].rid], out_t)
    out = Data(out_t.detach(), out_rid)
    try:
        slopes = _actual_slopes(op, args, kwargs, datas)
    except Exception:  # not differentiable: no gradient goes back
        return out

    def backward(g, datas=datas, slopes=slopes):
        res = []
        for d, sl in zip(datas, slopes, strict=True):
            st = data_stats(ctx.space, sl, out_rid)
            gg = Grad(g[0].GA * st.A, g[0].GC * _c(st) if g[0].GC is not None else None)
            res.append(unlift(ctx, d, out_rid, gg))
        return res

    ctx.record(datas, [out], backward)
    return out


def _actual_slopes(op, args, kwargs, datas) -> list[torch.Tensor]:
    """∂out/∂operand elementwise, each operand expanded to the output's shape."""
    shape = op.out.shape
    leaves = {
        id(d): d.value.detach().to(torch.float64).expand(shape).clone().requires_grad_(True)
        for d in datas
    }

    def sub(a):
        if isinstance(a, Data | Table):
            return leaves[id(a)]
        if isinstance(a, Const):
            return a.value
        if isinstance(a, list | tuple):
            return type(a)(sub(x) for x in a)
        return a

    with torch.enable_grad():
        y = op.func(*[sub(a) for a in args], **{k: sub(v) for k, v in kwargs.items()})
        grads = torch.autograd.grad(y.sum(), [leaves[id(d)] for d in datas], allow_unused=True)
    return [torch.zeros(shape, dtype=torch.float64) if g is None else g for g in grads]


# --------------------------------------------------------------------- reductions
def reduce_features(ctx: Context, op: Any, args: tuple, kwargs: dict) -> Any:
    """mean/sum over feature axes of a signal: a row statistic (deterministic when wide)."""
    src = args[0]
    if isinstance(src, Unknown):
        return src
    if not isinstance(src, Field | Lazy):
        return default(ctx, op, args, kwargs)
    dims = args[1] if len(args) > 1 else kwargs.get("dim")
    rid = rid_of(src)
    dims = [dims] if isinstance(dims, int) else list(dims or range(rid.dim()))
    if not all(is_feature_axis(rid, d) for d in dims):
        return Unknown(f"aten.{op.name} over positions or examples is not modelled")
    from gradwatch.theory import rules_norm

    return rules_norm.row_statistic(ctx, op, src, dims)


def prelu(ctx: Context, op: Any, args: tuple, kwargs: dict) -> Any:
    """PReLU with one slope: an elementwise function; one slope per channel is outside."""
    x, w = args[0], args[1]
    if isinstance(x, Field | Lazy) and _is_scalar(w):
        return compose(op, args, kwargs, [x])
    if isinstance(x, Field | Lazy):
        return Unknown("a PReLU with one slope per channel is not modelled")
    return default(ctx, op, args, kwargs)


RULES = {name: movement for name in MOVEMENT}
RULES.update(
    {
        "cat": movement,
        "addmm": matmul,
        "mm": matmul,
        "bmm": matmul,
        "baddbmm": matmul,
        "embedding": embedding,
        "mean": reduce_features,
        "sum": reduce_features,
        "_prelu_kernel": prelu,
        "prelu": prelu,
    }
)


def features(v: Value) -> int:
    """Features per row of a value."""
    r = rid_of(v)
    return features_per_row(r) if r is not None else 1
