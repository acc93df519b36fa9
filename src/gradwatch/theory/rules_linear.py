"""Weight matrices, embedding lookups, statistics over features, PReLU.

A weight matrix W of fan-in n, σw² = n·Var(W), with bias b: A' = σw² A + mean(b²),
mu' = mean(b); going back ΣGA' = σw² GA (Poole et al. 2016; He et al. 2015); and
E‖∂L/∂W‖² = Σ_{r,r'} E[δ_r·δ_r'] E[x_r·x_r'] (the gradient independent of the input).
"""



from __future__ import annotations

from typing import Any

import numpy as np
import torch

from gradwatch.theory.rules import (
    as_field,
    default,
    rid_of,
    stats_of,
)
from gradwatch.theory.values import (
    Const,
    Context,
    Data,
    Field,
    Lazy,
    Probs,
    Scores,
    Stats,
    Table,
    Unknown,
    Value,
    is_feature_axis,
    table_rows,
)


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
        if not left and rid.dim() == 2 and name in ("addmm", "mm"):
            from gradwatch.theory import rules_conv

            out = rules_conv.flattened_linear(ctx, op, fx, w, bias, float(alpha), float(beta))
            if out is not None:
                return out
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
    from gradwatch.theory import rules_conv

    if rules_conv.is_image(src, ctx) and all(d % rid.dim() >= 2 for d in dims):
        return rules_conv.spatial_linear(ctx, op, args, kwargs)  # over positions
    if not all(is_feature_axis(rid, d) for d in dims):
        return Unknown(f"aten.{op.name} over positions or examples is not modelled")
    from gradwatch.theory import rules_norm

    return rules_norm.row_statistic(ctx, op, src, dims)



RULES = {
    "addmm": matmul,
    "mm": matmul,
    "bmm": matmul,
    "baddbmm": matmul,
    "embedding": embedding,
    "mean": reduce_features,
    "sum": reduce_features,
}
