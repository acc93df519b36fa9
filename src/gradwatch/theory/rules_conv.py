"""Convolutions, pooling and spatial means of image-like signals (N, C, *spatial).

Rows are (example, spatial position); the channels are the features. A convolution of
kernel size K (taps) with weights of fan-in n = C_in·K/groups, σw² = n·Var(W), acts on the
second moments of its input as

    A'[p, p'] = (σw²/K) Σ_k A[p + k, p' + k] + mean(b²)

(the same tap k on both sides: different taps have independent weights; a tap that falls on
the zero padding adds nothing), C' the same, and the gradient goes back transposed,
GA[a, a'] = (σw²/K) Σ_k GA'[a − k, a' − k] (He et al. 2015 for the fan-in; the
positions as in the convolutional kernels of Xiao et al. 2018 and Novak et al. 2019).
A downsampled output's positions are a subset of its input's.

Max pooling of f(u) (u a mean-field signal, f its elementwise activation) is a deterministic
function of each channel's Gaussian field, so its moments are Gaussian expectations, taken
on fixed-seed draws with the batch's block structure (as batch norm's); going back each
window's gradient goes to its argmax, times f' there. Averages over positions (average
pooling, a global mean) are linear maps of the positions: A' = Mᵀ A M.

References: He et al. 2015, "Delving Deep into Rectifiers"; Xiao et al. 2018, "Dynamical
Isometry and a Mean Field Theory of CNNs"; Novak et al. 2019, "Bayesian Deep Convolutional
Networks with Many Channels are Gaussian Processes"; Yang et al. 2019 (batch norm).
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import torch

from gradwatch.theory import draws as law
from gradwatch.theory.rules import as_field, default, rid_of, stats_of
from gradwatch.theory.rules_norm import _sqrt_psd
from gradwatch.theory.values import (
    Context,
    Data,
    Field,
    Grad,
    Lazy,
    Stats,
    Table,
    Unknown,
    Value,
    is_feature_axis,
)

#: Draws of the batch for max pooling's expectations (each draw has B examples).
POOL_DRAWS = 96


def _grid(ctx: Context, rid: torch.Tensor) -> np.ndarray | None:
    """Positions (Space ids) of the spatial grid of an (N, C, *spatial) value, or None."""
    if rid.dim() < 3 or not is_feature_axis(rid, 1):
        return None
    rows = rid[0, 0].numpy()
    space = ctx.space
    if len(np.unique(space.ex[rows])) != 1 or len(np.unique(rows)) != rows.size:
        return None
    return space.pos[rows]


def _select(shape_in: tuple, shape_out: tuple) -> list[np.ndarray] | None:
    """Per spatial axis, the input coordinate that names each output coordinate."""
    if any(o > i for o, i in zip(shape_out, shape_in, strict=True)):
        return None
    return [(np.arange(o) * i) // o for o, i in zip(shape_out, shape_in, strict=True)]


def _out_rows(rid: torch.Tensor, sel: list[np.ndarray], out_shape: tuple) -> torch.Tensor:
    r = rid[:, :1]
    for d, s in enumerate(sel):
        r = r.index_select(2 + d, torch.as_tensor(s, dtype=torch.long))
    return r.expand(out_shape)


def _embed(T: int, pos: np.ndarray, block: np.ndarray) -> np.ndarray:
    out = np.zeros((T, T))
    out[np.ix_(pos, pos)] = block
    return out


# ------------------------------------------------------------------- convolution
def convolution(ctx: Context, op: Any, args: tuple, kwargs: dict) -> Any:
    """``convolution(x, W, b, stride, padding, dilation, transposed, output_padding, groups)``."""
    x, w = args[0], args[1]
    if isinstance(x, Unknown):
        return x
    if isinstance(w, Unknown):
        return w
    if not (isinstance(x, Data | Field | Lazy) and isinstance(w, Table)):
        return default(ctx, op, args, kwargs)
    if op.name == "mkldnn_convolution" or len(args) < 9:
        return Unknown(f"a convolution called as aten.{op.name} is not modelled")
    bias, stride, padding, dilation, transposed, _, groups = args[2:9]
    if transposed:
        return Unknown("a transposed convolution is not modelled")
    rid = rid_of(x)
    if rid is None:
        return Unknown("a convolution of an input-dependent tensor whose rows are lost")
    grid = _grid(ctx, rid)
    if grid is None:
        return Unknown("a convolution whose channels are not the features of its rows")
    out_t = op.out
    shape_in, shape_out = tuple(rid.shape[2:]), tuple(out_t.shape[2:])
    sel = _select(shape_in, shape_out)
    if sel is None:
        return Unknown("a convolution whose output has more positions than its input")
    W = w.value
    fx = as_field(ctx, x) if isinstance(x, Lazy) else x
    st = stats_of(ctx, fx)
    taps = tuple(W.shape[2:])
    K = int(np.prod(taps))
    fan_in = int(W[0].numel())
    b = bias.value if isinstance(bias, Table) else None
    from gradwatch.theory.rules_linear import _base_param, _weight_info  # noqa: PLC0415

    key = _base_param(w)
    sw2 = _weight_info(ctx, W, fan_in, b, key)
    ctx.uses.append((key, W))
    grid_out = grid[np.ix_(*sel)].reshape(-1)
    # per tap: (output positions, the input positions they read), the valid ones only
    pairs = []
    for tap in itertools.product(*(range(k) for k in taps)):
        coords, ok = [], np.ones(shape_out, dtype=bool)
        for d in range(len(taps)):
            c = np.arange(shape_out[d]) * stride[d] - padding[d] + tap[d] * dilation[d]
            shp = [1] * len(taps)
            shp[d] = -1
            c = c.reshape(shp)
            ok = ok & (c >= 0) & (c < shape_in[d])
            coords.append(np.clip(c, 0, shape_in[d] - 1))
        coords = [np.broadcast_to(c, shape_out) for c in coords]
        src = grid[tuple(coords)].reshape(-1)
        v = ok.reshape(-1)
        if v.any():
            pairs.append((grid_out[v], src[v]))
    T = ctx.space.T
    scale = sw2 / K
    bb = b.detach().to(torch.float64) if b is not None else None
    b2 = float((bb * bb).mean()) if bb is not None else 0.0
    bm = float(bb.mean()) if bb is not None else 0.0
    A = np.zeros((T, T))
    C = np.zeros((T, T)) if st.C is not None else None
    for po, pi in pairs:
        A[np.ix_(po, po)] += st.A[np.ix_(pi, pi)]
        if C is not None:
            C[np.ix_(po, po)] += st.C[np.ix_(pi, pi)]
    present = np.zeros(T, dtype=bool)
    present[grid_out] = True
    blk = np.ix_(grid_out, grid_out)
    A *= scale
    A[blk] += b2
    if C is not None:
        C *= scale
        C[blk] += b2
    out = Field(
        stats=Stats(A=A, C=C, mu=np.full(T, bm), present=present),
        rid=_out_rows(rid, sel, tuple(out_t.shape)),
        lineage=getattr(fx, "lineage", frozenset()) | {key},
        token=frozenset({key}),
    )
    if isinstance(x, Data):
        # each output channel reads fan_in actual numbers: few of them (an RGB image's
        # 27), and a channel's spread over the batch is a random quadratic form of that
        # many weights, whose inverse a batch norm takes (see rules_norm.batch_norm)
        out._dof = fan_in  # type: ignore[attr-defined]
    space = ctx.space
    per_group = W.shape[1]  # input channels each output channel reads

    def backward(g):
        gy = g[0]
        B = space.B
        ga = np.zeros((T, T))
        gc = np.zeros((T, T)) if gy.GC is not None else None
        wg = 0.0
        for po, pi in pairs:
            go = gy.GA[np.ix_(po, po)]
            ga[np.ix_(pi, pi)] += go
            wg += B * float(np.sum(go * st.A[np.ix_(pi, pi)]))
            if gc is not None:
                gco = gy.GC[np.ix_(po, po)]
                gc[np.ix_(pi, pi)] += gco
                if st.C is not None:
                    wg += B * (B - 1) * float(np.sum(gco * st.C[np.ix_(pi, pi)]))
        wg *= per_group
        if bb is not None:
            gcs = float(np.sum(gy.GC[blk])) if gy.GC is not None else 0.0
            wg += B * float(np.sum(gy.GA[blk])) + B * (B - 1) * gcs
        ctx.weight_grads[key] = ctx.weight_grads.get(key, 0.0) + wg
        return [Grad(ga * scale, None if gc is None else gc * scale)]

    ctx.record([fx], [out], backward)
    return out


# ------------------------------------------------------- a linear map of flattened maps
def flattened_linear(ctx, op, fx, w, bias, alpha: float, beta: float) -> Field | None:
    """``x.flatten(1) @ W``: a weight matrix reading every position and channel of an example.

    Independent weights for each (channel, position) make the positions' cross terms vanish:
    A' = σw² · mean_p A[p, p] + mean(b²) at one position per example, and going back each
    position gets σw²/P of the gradient, G_A[p, p] = (σw²/P) G'_A. None when the rows of an
    example are not all read, each with the same number of features.
    """
    from gradwatch.theory.rules_linear import _base_param, _weight_info  # noqa: PLC0415

    rid = fx.rid
    W = w.value if isinstance(w, Table) else None
    if W is None or rid.dim() != 2 or W.dim() != 2:
        return None
    space = ctx.space
    rows = rid.numpy()
    ex = space.ex[rows]
    if not (ex == ex[:, :1]).all():
        return None
    st = stats_of(ctx, fx)
    pos = np.flatnonzero(st.present)
    P = len(pos)
    first = space.pos[rows[:, 0]]
    if P == 0 or not (first == first[0]).all():
        return None
    counts = np.bincount(space.pos[rows[0]], minlength=space.T)
    if set(np.flatnonzero(counts)) != set(pos) or len(set(counts[pos])) != 1:
        return None
    fan_in = int(W.shape[0])
    b = bias.value if isinstance(bias, Table) and op.name == "addmm" else None
    key = _base_param(w)
    sw2 = _weight_info(ctx, W, fan_in, b, key) * alpha * alpha
    ctx.uses.append((key, W))
    bb = beta * b.detach().to(torch.float64) if b is not None and beta else None
    b2 = float((bb * bb).mean()) if bb is not None else 0.0
    bm = float(bb.mean()) if bb is not None else 0.0
    p0 = int(first[0])
    T = space.T
    A = np.zeros((T, T))
    A[p0, p0] = sw2 * float(np.mean(np.diag(st.A)[pos])) + b2
    C = None
    if st.C is not None:
        C = np.zeros((T, T))
        C[p0, p0] = sw2 * float(np.mean(np.diag(st.C)[pos])) + b2
    present = np.zeros(T, dtype=bool)
    present[p0] = True
    out_rows = torch.as_tensor(rows[:, :1]).expand(tuple(op.out.shape))
    out = Field(
        stats=Stats(A=A, C=C, mu=np.full(T, bm), present=present),
        rid=out_rows,
        lineage=getattr(fx, "lineage", frozenset()) | {key},
        token=frozenset({key}),
    )
    per_pos = fan_in // P  # features of one position

    def backward(g):
        gy = g[0]
        B = space.B
        ga = np.zeros((T, T))
        ga[pos, pos] = sw2 / P * gy.GA[p0, p0]
        gc = None
        wg = B * gy.GA[p0, p0] * per_pos * float(np.sum(np.diag(st.A)[pos]))
        if gy.GC is not None:
            gc = np.zeros((T, T))
            gc[pos, pos] = sw2 / P * gy.GC[p0, p0]
            if st.C is not None:
                wg += B * (B - 1) * gy.GC[p0, p0] * per_pos * float(np.sum(np.diag(st.C)[pos]))
        if bb is not None:
            wg += B * gy.GA[p0, p0] + (B * (B - 1) * gy.GC[p0, p0] if gy.GC is not None else 0.0)
        ctx.weight_grads[key] = ctx.weight_grads.get(key, 0.0) + float(wg)
        return [Grad(ga, gc)]

    ctx.record([fx], [out], backward)
    return out


# ------------------------------------------------------------------ linear pooling
def spatial_linear(ctx: Context, op: Any, args: tuple, kwargs: dict) -> Any:
    """Average pooling, adaptive average pooling, a mean over spatial axes: M over positions."""
    x = args[0]
    if isinstance(x, Unknown):
        return x
    if not isinstance(x, Field | Lazy):
        return default(ctx, op, args, kwargs)
    rid = rid_of(x)
    grid = _grid(ctx, rid) if rid is not None else None
    if grid is None:
        return Unknown(f"aten.{op.name} over positions or examples is not modelled")
    nd = rid.dim() - 2
    if op.name in ("mean", "sum"):
        dims = args[1] if len(args) > 1 else kwargs.get("dim")
        dims = [dims] if isinstance(dims, int) else list(dims or range(rid.dim()))
        dims = sorted(d % rid.dim() for d in dims)
        if any(d < 2 for d in dims):
            return Unknown(f"aten.{op.name} over examples or channels of an image is not modelled")
    out_t = op.out
    fx = as_field(ctx, x)
    st = fx.stats
    shape_in = tuple(rid.shape[2:])
    n_in = int(np.prod(shape_in))
    basis = torch.eye(n_in, dtype=torch.float64).reshape(n_in, 1, *shape_in)
    with torch.no_grad():
        m = op.func(basis, *args[1:], **kwargs)
    m = m[0] if isinstance(m, tuple | list) else m
    M = m.reshape(n_in, -1).numpy()  # (input positions, output positions)
    n_out = M.shape[1]
    keep = out_t.dim() == rid.dim()
    shape_out = tuple(out_t.shape[2:]) if keep else (1,) * nd
    if int(np.prod(shape_out)) != n_out:
        return Unknown(f"aten.{op.name}: positions that cannot be followed")
    sel = _select(shape_in, shape_out)
    if sel is None:
        return Unknown(f"aten.{op.name} with more output positions than input positions")
    gin = grid.reshape(-1)
    gout = grid[np.ix_(*sel)].reshape(-1)
    T = ctx.space.T
    Ain = st.A[np.ix_(gin, gin)]
    A = _embed(T, gout, M.T @ Ain @ M)
    C = _embed(T, gout, M.T @ st.C[np.ix_(gin, gin)] @ M) if st.C is not None else None
    mu = np.zeros(T)
    mu[gout] = M.T @ st.mu[gin]
    present = np.zeros(T, dtype=bool)
    present[gout] = True
    rows = _out_rows(rid, sel, (rid.shape[0], rid.shape[1], *shape_out))
    if rows.shape[1] != out_t.shape[1]:
        rows = rows[:, :1].expand(rows.shape[0], out_t.shape[1], *shape_out)
    if not keep:
        rows = rows.reshape(out_t.shape[0], out_t.shape[1], -1)[..., 0].expand(out_t.shape)
    out = Field(
        stats=Stats(A=A, C=C, mu=mu, present=present),
        rid=rows,
        lineage=fx.lineage,
        token=fx.token,
    )

    def backward(g):
        gy = g[0]
        ga = _embed(T, gin, M @ gy.GA[np.ix_(gout, gout)] @ M.T)
        gc = None
        if gy.GC is not None:
            gc = _embed(T, gin, M @ gy.GC[np.ix_(gout, gout)] @ M.T)
        return [Grad(ga, gc)]

    ctx.record([fx], [out], backward)
    return out


# --------------------------------------------------------------------- max pooling
def max_pool(ctx: Context, op: Any, args: tuple, kwargs: dict) -> Any:
    """``max_pool{1,2,3}d_with_indices`` of f(u): sampled Gaussian expectations (see above)."""
    x = args[0]
    if isinstance(x, Unknown):
        return [x, x]
    if not isinstance(x, Field | Lazy):
        return default(ctx, op, args, kwargs)
    rid = rid_of(x)
    grid = _grid(ctx, rid) if rid is not None else None
    if grid is None:
        u = Unknown("a max pooling whose channels are not the features of its rows")
        return [u, u]
    if isinstance(x, Lazy):
        src, fn = x.source, x.fn
    else:
        src, fn = x, (lambda t: t)
    st = src.stats
    if st.C is None and ctx.space.B > 1:
        u = Unknown("max pooling needs the moments across examples")
        return [u, u]
    out_t = op.out[0]
    shape_in, shape_out = tuple(rid.shape[2:]), tuple(out_t.shape[2:])
    sel = _select(shape_in, shape_out)
    if sel is None:
        u = Unknown("a max pooling with more output positions than input positions")
        return [u, u]
    gin = grid.reshape(-1)
    gout = grid[np.ix_(*sel)].reshape(-1)
    n_in, n_out = len(gin), len(gout)
    B, T = ctx.space.B, ctx.space.T
    A = st.A[np.ix_(gin, gin)]
    C = st.C[np.ix_(gin, gin)] if st.C is not None else np.zeros_like(A)
    mu = st.mu[gin]
    Mdraw = law.draw_count(B, n_out)  # the forward's draws (the law it hands on)
    Mback = min(Mdraw, max(8, POOL_DRAWS * 32 // max(B, 1)))  # the backward's routing
    gen = np.random.default_rng(ctx.seed * 7919 + len(ctx.tape) + 29)
    lw = _sqrt_psd(A - C)
    lc = _sqrt_psd(C - np.outer(mu, mu))
    u = gen.standard_normal((Mdraw, B, n_in)) @ lw.T + gen.standard_normal((Mdraw, 1, n_in)) @ lc.T
    u = u + mu
    carried = law.drawn(src) if getattr(src, "_not_gaussian", False) else None
    if carried is not None:  # a signal that is not Gaussian: its own law
        where = {int(p): i for i, p in enumerate(carried.pos)}
        if all(int(p) in where for p in gin):
            u = carried.y[:, :, [where[int(p)] for p in gin]]
            Mdraw = u.shape[0]
            Mback = min(Mback, Mdraw)
    xt = torch.from_numpy(u).requires_grad_(True)
    with torch.enable_grad():
        vt = fn(xt)
        dv = torch.autograd.grad(vt.sum(), xt, allow_unused=True)[0] if vt.requires_grad else None
    v = vt.detach().to(torch.float64)
    dfv = dv.numpy() if dv is not None else np.zeros_like(u)
    img = v.reshape(Mdraw * B, 1, *shape_in)
    with torch.no_grad():
        y, idx = op.func(img, *args[1:], **kwargs)
    y = y.reshape(Mdraw, B, n_out).numpy()
    idx = idx.reshape(Mdraw * B, n_out).numpy()  # flat input coordinate of each window's max
    # per draw, within (same example) and across (two examples of the draw) second moments
    own = np.einsum("mbt,mbs->ts", y, y)
    Aout = own / (Mdraw * B)
    tot = y.sum(axis=1)
    Cout = (np.einsum("mt,ms->ts", tot, tot) - own) / (Mdraw * B * max(B - 1, 1))
    Cout = 0.5 * (Cout + Cout.T)
    mu_out = np.zeros(T)
    mu_out[gout] = y.mean(axis=(0, 1))
    present = np.zeros(T, dtype=bool)
    present[gout] = True
    out = Field(
        stats=Stats(
            A=_embed(T, gout, Aout),
            C=_embed(T, gout, Cout) if st.C is not None else None,
            mu=mu_out,
            present=present,
        ),
        rid=_out_rows(rid, sel, tuple(out_t.shape)),
        lineage=src.lineage,
        token=src.token,
    )
    idx = idx[: Mback * B]
    wts = np.take_along_axis(dfv.reshape(Mdraw * B, n_in)[: Mback * B], idx, axis=1)  # f' there
    n_s = idx.shape[0]
    rbar = np.zeros((n_in, n_out))
    np.add.at(rbar, (idx, np.broadcast_to(np.arange(n_out), idx.shape)), wts)
    rbar /= n_s

    def backward(g):
        gy = g[0]
        go = gy.GA[np.ix_(gout, gout)]
        acc = np.zeros(n_in * n_in)
        chunk = max(1, 2_000_000 // max(n_out * n_out, 1))
        for s0 in range(0, n_s, chunk):
            ii, ww = idx[s0 : s0 + chunk], wts[s0 : s0 + chunk]
            keyf = (ii[:, :, None] * n_in + ii[:, None, :]).reshape(-1)
            val = (ww[:, :, None] * ww[:, None, :] * go[None]).reshape(-1)
            acc += np.bincount(keyf, weights=val, minlength=n_in * n_in)
        ga = _embed(T, gin, acc.reshape(n_in, n_in) / n_s)
        gc = None
        if gy.GC is not None:
            gc = _embed(T, gin, rbar @ gy.GC[np.ix_(gout, gout)] @ rbar.T)
        return [Grad(ga, gc)]

    out._not_gaussian = True  # type: ignore[attr-defined]
    order = np.argsort(gout)
    out._draws = law.Draws(gout[order], y[:, :, order])  # type: ignore[attr-defined]
    ctx.record([src], [out], backward)
    fake = Unknown("max pooling indices")
    return [out, fake]


RULES = {
    "convolution": convolution,
    "_convolution": convolution,
    "mkldnn_convolution": convolution,
    "avg_pool1d": spatial_linear,
    "avg_pool2d": spatial_linear,
    "avg_pool3d": spatial_linear,
    "_adaptive_avg_pool2d": spatial_linear,
    "_adaptive_avg_pool3d": spatial_linear,
    "adaptive_avg_pool1d": spatial_linear,
    "max_pool2d_with_indices": max_pool,
    "max_pool3d_with_indices": max_pool,
}


def is_image(v: Value, ctx: Context) -> bool:
    """Whether a value is laid out (N, C, *spatial) with the channels as features."""
    rid = rid_of(v)
    return rid is not None and rid.dim() >= 3 and _grid(ctx, rid) is not None
