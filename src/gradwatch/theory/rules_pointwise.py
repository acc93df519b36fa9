"""Elementwise operations: functions of one signal, sums and products of independent ones.

- elementwise φ of one signal: a :class:`~gradwatch.theory.values.Lazy` function, whose
  moments are Gaussian integrals (:mod:`~gradwatch.theory.kernels`);
- sum of independent signals (a residual connection x + f(x), token + position
  embeddings): A' = A_x + A_f + μ_x μ_fᵀ + μ_f μ_xᵀ; the gradient reaches both (Yang &
  Schoenholz 2017);
- product of independent signals (gating, a dropout mask, a norm's γ): A' = A_x ⊙ A_y;
- elementwise operations on known tensors: actual values, gradients through actual slopes.
"""



from __future__ import annotations

from typing import Any

import numpy as np
import torch

from gradwatch.theory import draws as law
from gradwatch.theory.rules import (
    KINKS,
    _c,
    _flat,
    _is_scalar,
    _kind_of_actual,
    _scalar,
    as_field,
    as_lazy,
    default,
    functional,
    independent,
    rid_of,
)
from gradwatch.theory.rules_linear import (
    Columns,
)
from gradwatch.theory.rules_rows import (
    _broadcast_rid,
    lifted_stats,
    unlift,
)
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
)


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


#: Why a nonlinearity of a non-Gaussian sum whose law is not carried by draws is outside.
NOT_GAUSSIAN_REASON = (
    "a nonlinearity applied to a sum that carries a non-Gaussian signal (an earlier "
    "nonlinearity's output, a max pooling) together with an actual tensor or a constant, or "
    "with operands at different positions: its law is not carried (the ReLU after a residual "
    "addition, as in the original ResNet, is: both operands come from weight matrices), and "
    "the Gaussian rules drift block after block there (0.2-0.4 decade over ResNet-34/50 at "
    "init against Monte Carlo); measure this model with gw.check"
)


def not_gaussian(v: Any) -> bool:
    """Whether a value is a nonlinear function of a signal, or a sum that carries one."""
    if isinstance(v, Lazy):
        return v.affine is None or bool(getattr(v.source, "_not_gaussian", False))
    return bool(getattr(v, "_not_gaussian", False))


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
    if affine is None and getattr(src, "_not_gaussian", False) and law.drawn(src) is None:
        return Unknown(NOT_GAUSSIAN_REASON + f" (aten.{op.name})")
    rid = _broadcast_rid([rid_of(a) for a in signals], op.out)
    names = tuple(dict.fromkeys(sum((lz.names for lz in lazies), ()) + (op.name,)))
    return Lazy(source=src, fn=fn, rid=rid, affine=affine, kinks=kinks, names=names)


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

        # the gradient reaches each operand's own coordinates, so its parts go on (the skip
        # path's; a weight matrix or a norm reading them takes their sum)
        def back_a(g):
            return Grad(g.GA, g.GC, ones=g.ones, own=c2a * g.own + (1 - c2a), parts=g.parts)

        def back_b(g):
            gs = g.scaled(scale_b)
            return Grad(gs.GA, gs.GC, ones=g.ones, own=c2b * g.own + (1 - c2b), parts=gs.parts)
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
    if any(not_gaussian(v) for v in (a, b)):
        out._not_gaussian = True  # type: ignore[attr-defined]
        _carry_draws(ctx, out, a, b, name, s if name in ("add", "sub") else 1.0)
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


def _carry_draws(ctx: Context, out: Field, a: Any, b: Any, name: str, s: float) -> None:
    """The law of a sum or product that carries a non-Gaussian signal, as draws (on demand).

    Each operand is drawn from its own law (carried draws, or its Gaussian), independently
    of the other (they are independent over the random weights); a sum with a scalar or an
    actual tensor gets no draws (a nonlinearity of it stays outside the theory).
    """
    if name not in ("add", "sub", "mul"):
        return
    if not all(isinstance(v, Field | Lazy) for v in (a, b)):
        return
    if any(rid_of(v).shape != out.rid.shape for v in (a, b)):
        return

    def make() -> law.Draws | None:
        da, db = law.of(ctx, a, salt=1), law.of(ctx, b, salt=2)
        if da is None or db is None or not np.array_equal(da.pos, db.pos):
            return None
        m = min(da.y.shape[0], db.y.shape[0])
        ya, yb = da.y[:m], db.y[:m]
        y = ya * yb if name == "mul" else ya + (-s if name == "sub" else s) * yb
        return law.Draws(da.pos, y)

    out._make_draws = make  # type: ignore[attr-defined]


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


def prelu(ctx: Context, op: Any, args: tuple, kwargs: dict) -> Any:
    """PReLU with one slope: an elementwise function; one slope per channel is outside."""
    x, w = args[0], args[1]
    if isinstance(x, Field | Lazy) and _is_scalar(w):
        return compose(op, args, kwargs, [x])
    if isinstance(x, Field | Lazy):
        return Unknown("a PReLU with one slope per channel is not modelled")
    return default(ctx, op, args, kwargs)


RULES = {"_prelu_kernel": prelu, "prelu": prelu}
