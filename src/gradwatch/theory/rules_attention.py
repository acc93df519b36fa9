"""Mean-field rule for softmax attention: Y = softmax(scale · Q Kᵀ + mask) V, per head.

In the wide limit the queries, keys and values of one head are Gaussian over the random
projection weights, independent of each other (different weights), with the rows' second
moments A (positions of one example) and C (two examples) of their tensors, and i.i.d.
across the head's d features. So the output's moments are Gaussian expectations

    A_Y[t, t'] = E[ Σ_{s,s'} P_ts P_t's' V_s · V_s' ] / d_v,    P = softmax(scale · Q Kᵀ + mask),

and going back (δY independent of Q, K, V):
δV = Pᵀ δY, δP_ts = δY_t · V_s, δS = P ⊙ (δP − rowsum(P ⊙ δP)), δQ = scale δS K,
δK = scale δSᵀ Q. These expectations have no closed form at finite sequence length with a
causal mask, so they are evaluated by a fixed-seed sample of the Gaussian the theory
specifies (512 draws of one head of two examples): numerical integration, not a run of the
model. Two limits come out of it: with near-uniform attention the output is the mean of the
values, its tokens grow alike with depth (rank collapse, Dong et al. 2021; Noci et al. 2022)
and the gradient of the queries and keys vanishes with the tokens' spread (Noci et al.
2022); Kedia et al. 2024 use the uniform-attention approximation, which this sample
reproduces at small scores.

The rows that attend together must belong to one example: when the input's first axis is
not the batch (``nn.MultiheadAttention`` without ``batch_first``), the rows are partitioned
again from the attention's own groups (:class:`~gradwatch.theory.values.Repartition`).

References: Vaswani et al. 2017; Dong, Cordonnier & Loukas 2021, "Attention is not all you
need: pure attention loses rank doubly exponentially with depth"; Noci et al. 2022, "Signal
propagation in transformers: theoretical perspectives and the role of rank collapse";
Kedia et al. 2024, "Transformers get stable".
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from gradwatch.theory.rules import (
    _flat,
    _is_scalar,
    _scalar,
    as_field,
    independent,
    stats_of,
)
from gradwatch.theory.trace import schema_info
from gradwatch.theory.values import (
    Const,
    Context,
    Data,
    Field,
    Grad,
    Lazy,
    Probs,
    Repartition,
    Scores,
    Space,
    Stats,
    Table,
    Unknown,
    Value,
    is_feature_axis,
)

NEG = float("-inf")


def _rows_along(rid: torch.Tensor, axis: int) -> torch.Tensor:
    """Row ids along ``axis`` (others flattened into groups): (G, L)."""
    moved = rid.movedim(axis, -1)
    return moved.reshape(-1, moved.shape[-1])


def _signal(ctx: Context, v: Value) -> Field | None:
    if isinstance(v, Lazy):
        return as_field(ctx, v)
    if isinstance(v, Field):
        return v
    if isinstance(v, Data) and v.rid is not None:
        return as_field(ctx, v)
    return None


# --------------------------------------------------------------------------- scores
def product(ctx: Context, op: Any, a: Value, b: Value) -> Value:
    """A batched product of two signals: scores q kᵀ, or probabilities times values."""
    out = op.out
    if isinstance(a, Probs):
        v = _signal(ctx, b)
        if v is None:
            return Unknown("attention probabilities times a non-signal")
        sc = a.scores
        v_rows = _rows_along(v.rid[..., 0], -1) if v.rid.dim() >= 2 else None
        if v_rows is None or not is_feature_axis(v.rid, -1):
            return Unknown("attention values whose features are not the last axis")
        q_rows = sc.q_rows
        out_rid = q_rows.reshape(out.shape[:-1]).unsqueeze(-1).expand(out.shape)
        return attend(
            ctx, sc.q, sc.k, v, q_rows, sc.k_rows, v_rows, sc.mask, sc.scale, a.keep, out, out_rid
        )
    if isinstance(a, Scores):
        return Unknown("attention scores multiplied before a softmax")
    q, k = _signal(ctx, a), _signal(ctx, b)
    if q is None or k is None:
        return Unknown("a product of signals that is not attention")
    if not (is_feature_axis(q.rid, -1) and is_feature_axis(k.rid, -2)):
        return Unknown("a product of two signals over positions is not modelled")
    q_rows = q.rid.select(-1, 0).reshape(-1, q.rid.shape[-2])
    k_rows = k.rid.select(-2, 0).reshape(-1, k.rid.shape[-1])
    return Scores(q=q, k=k, q_rows=q_rows, k_rows=k_rows, shape=tuple(out.shape))


def pointwise(ctx: Context, op: Any, args: tuple, kwargs: dict) -> Value:
    """Scale and mask the scores; dropout on the probabilities."""
    name = op.name.rstrip("_")
    vals = [a for a in _flat((args, kwargs)) if isinstance(a, Value)]
    sc = next((a for a in vals if isinstance(a, Scores)), None)
    pr = next((a for a in vals if isinstance(a, Probs)), None)
    if pr is not None:
        other = args[1] if args[0] is pr else args[0]
        if name == "mul" and isinstance(other, Const) and isinstance(other.value, torch.Tensor):
            keep = float((other.value != 0).float().mean())
            return Probs(scores=pr.scores, keep=pr.keep * keep)
        if name in ("mul", "div") and _is_scalar(other) and float(_scalar(other)) == 1.0:
            return pr
        return Unknown(f"aten.{op.name} of attention probabilities is not modelled")
    assert sc is not None
    G, T1, T2 = sc.q_rows.shape[0], sc.q_rows.shape[1], sc.k_rows.shape[1]
    if name in ("mul", "div") and len(vals) == 1:
        s = float(_scalar(args[1] if args[0] is sc else args[0]))
        return _with(sc, scale=sc.scale * (s if name == "mul" else 1.0 / s))
    if name in ("add", "sub") and len(vals) == 2:
        other = args[1] if args[0] is sc else args[0]
        if isinstance(other, Const | Table) and isinstance(other.value, torch.Tensor):
            m = other.value.detach().to(torch.float64)
            m = -m if name == "sub" else m
            return _with(sc, mask=_add_mask(sc, m.expand(sc.shape).reshape(G, T1, T2)))
        if _is_scalar(other):
            return sc  # a constant added to every score changes no probability
    if name == "where" and len(vals) >= 2:
        cond, a, b = args[0], args[1], args[2]
        if isinstance(cond, Const):
            c = torch.as_tensor(cond.value).expand(sc.shape).reshape(G, T1, T2).bool()
            if a is sc and (_is_scalar(b) or isinstance(b, Const)):
                fill = torch.as_tensor(
                    _scalar(b) if _is_scalar(b) else b.value, dtype=torch.float64
                )
                add = torch.where(
                    c,
                    torch.zeros((), dtype=torch.float64),
                    fill.expand(sc.shape).reshape(G, T1, T2) if fill.dim() else fill,
                )
                return _with(sc, mask=_add_mask(sc, add))
            if b is sc and (_is_scalar(a) or isinstance(a, Const)):
                fill = torch.as_tensor(
                    _scalar(a) if _is_scalar(a) else a.value, dtype=torch.float64
                )
                add = torch.where(
                    c,
                    fill.expand(sc.shape).reshape(G, T1, T2) if fill.dim() else fill,
                    torch.zeros((), dtype=torch.float64),
                )
                return _with(sc, mask=_add_mask(sc, add))
    if name == "masked_fill" and args[0] is sc and isinstance(args[1], Const):
        c = torch.as_tensor(args[1].value).expand(sc.shape).reshape(G, T1, T2).bool()
        fill = float(_scalar(args[2]))
        add = torch.where(
            c, torch.tensor(fill, dtype=torch.float64), torch.zeros((), dtype=torch.float64)
        )
        return _with(sc, mask=_add_mask(sc, add))
    return Unknown(f"aten.{op.name} of attention scores is not modelled")


def _with(sc: Scores, **kw: Any) -> Scores:
    d = {k: getattr(sc, k) for k in ("q", "k", "q_rows", "k_rows", "scale", "mask", "shape")}
    d.update(kw)
    return Scores(**d)


def _add_mask(sc: Scores, m: torch.Tensor) -> torch.Tensor:
    # masks are added in score units; store them already divided by nothing (scale applies
    # to q kᵀ only)
    m = torch.where(m < -1e30, torch.tensor(NEG, dtype=torch.float64), m)
    return m if sc.mask is None else sc.mask + m


def softmax(ctx: Context, op: Any, args: tuple, kwargs: dict) -> Value:
    """Softmax over the keys: probabilities."""
    sc = args[0]
    if isinstance(sc, Unknown):
        return sc
    dim = args[1] if len(args) > 1 else kwargs.get("dim", -1)
    if not isinstance(sc, Scores):
        from gradwatch.theory.rules import default

        if any(isinstance(a, Field | Lazy) for a in _flat(args)):
            return Unknown("a softmax over features of a signal is not modelled")
        return default(ctx, op, args, kwargs)
    if dim not in (-1, len(sc.shape) - 1):
        return Unknown("a softmax over an axis other than the keys")
    return Probs(scores=sc)


def sdpa(ctx: Context, op: Any, args: tuple, kwargs: dict) -> Any:
    """The fused scaled-dot-product attention kernels."""
    q, k, v = args[0], args[1], args[2]
    schema = list(schema_info(op.func)[2])

    def arg(key: str, default: Any = None) -> Any:
        if key in kwargs:
            return kwargs[key]
        i = schema.index(key) if key in schema else -1
        return args[i] if 0 <= i < len(args) else default

    extra = [Unknown("attention statistics are not modelled")] * 8
    bad = next((a for a in (q, k, v) if isinstance(a, Unknown)), None)
    if bad is not None:
        return [bad] + extra
    fq, fk, fv = _signal(ctx, q), _signal(ctx, k), _signal(ctx, v)
    if fq is None or fk is None or fv is None:
        return [Unknown("attention over inputs that are not signals")] + extra
    out = op.out[0] if isinstance(op.out, list | tuple) else op.out
    dh = out.shape[-1] if False else fq.rid.shape[-1]
    scale = arg("scale")
    scale = float(scale) if scale is not None else 1.0 / float(np.sqrt(dh))
    causal = bool(arg("is_causal", False))
    mask_v = arg("attn_mask") if "attn_mask" in schema else arg("attn_bias")
    dropout = float(arg("dropout_p", 0.0) or 0.0)
    q_rows = _rows_along(fq.rid.select(-1, 0), -1)
    k_rows = _rows_along(fk.rid.select(-1, 0), -1)
    v_rows = _rows_along(fv.rid.select(-1, 0), -1)
    G, T1, T2 = q_rows.shape[0], q_rows.shape[1], k_rows.shape[1]
    mask = None
    if causal:
        tri = torch.ones(T1, T2, dtype=torch.bool).tril(diagonal=T2 - T1)
        mask = torch.where(tri, 0.0, NEG).to(torch.float64).expand(G, T1, T2)
    if isinstance(mask_v, Const | Table) and isinstance(mask_v.value, torch.Tensor):
        m = mask_v.value
        shape = tuple(q_rows.shape[:1])
        full = tuple(out.shape[:-2]) + (T1, T2)
        if m.dtype == torch.bool:
            m = torch.where(m, 0.0, NEG)
        m = m.to(torch.float64).expand(full).reshape(G, T1, T2)
        mask = m if mask is None else mask + m
        _ = shape
    elif mask_v is not None and isinstance(mask_v, Value):
        return [Unknown("an attention mask computed from signals")] + extra
    out_rid = fq.rid.select(-1, 0).unsqueeze(-1).expand(out.shape)
    y = attend(ctx, fq, fk, fv, q_rows, k_rows, v_rows, mask, scale, 1.0 - dropout, out, out_rid)
    return [y] + extra


# ---------------------------------------------------------------------- the moments
def _partition(space: Space, groups: list[torch.Tensor]) -> Space | None:
    """A new partition of the rows when attention groups span several examples."""
    rows = torch.cat([g.reshape(-1) for g in groups]).numpy()
    first = np.concatenate(
        [np.repeat(g[:, :1].numpy(), g.shape[1], axis=1).reshape(-1) for g in groups]
    )
    if np.all(space.ex[rows] == space.ex[first]):
        return None
    n = len(space.ex)
    parent = np.arange(n)

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for r, f in zip(rows, first, strict=True):
        a, b = find(int(r)), find(int(f))
        if a != b:
            parent[max(a, b)] = min(a, b)
    roots = np.array([find(i) for i in range(n)])
    labels = {r: i for i, r in enumerate(dict.fromkeys(roots.tolist()))}
    ex = np.array([labels[r] for r in roots])
    sizes = np.bincount(ex)
    if not np.all(sizes == sizes[0]):
        raise ValueError("examples of different lengths")
    pos = np.zeros(n, dtype=int)
    for e in range(len(sizes)):
        members = np.flatnonzero(ex == e)
        pos[members] = np.arange(len(members))
    return Space(B=len(sizes), T=int(sizes[0]), ex=ex, pos=pos, track_cross=space.track_cross)


def attend(ctx, q, k, v, q_rows, k_rows, v_rows, mask, scale, keep, out, out_rid) -> Value:
    """Moments of one attention layer's output, and its backward, by Gaussian expectation."""
    space = ctx.space
    new = _partition(space, [torch.cat([q_rows, k_rows], dim=1), v_rows])
    if new is not None:
        raise Repartition(new)
    for a, b in ((q, k), (q, v), (k, v)):
        if a is not b and not independent(a, b):
            return Unknown(
                "attention whose queries, keys and values are not independent projections"
            )
    if not torch.equal(k_rows, v_rows):
        return Unknown("attention whose keys and values sit at different positions")
    ex_of = space.ex[q_rows[:, 0].numpy()]
    heads0 = np.flatnonzero(ex_of == ex_of[0])
    pq = space.pos[q_rows[heads0[0]].numpy()]
    pk = space.pos[k_rows[heads0[0]].numpy()]
    masks = [None if mask is None else mask[g] for g in heads0]
    # heads are alike but for their masks: one representative per distinct mask
    reps: list[tuple[torch.Tensor | None, int]] = []
    for m in masks:
        for i, (mm, c) in enumerate(reps):
            if (m is None and mm is None) or (
                m is not None and mm is not None and torch.equal(m, mm)
            ):
                reps[i] = (mm, c + 1)
                break
        else:
            reps.append((m, 1))
    for g in range(len(q_rows)):
        if not (
            np.array_equal(space.pos[q_rows[g].numpy()], pq)
            and np.array_equal(space.pos[k_rows[g].numpy()], pk)
        ):
            return Unknown("attention groups with different positions in different examples")
    sq, sk, sv = stats_of(ctx, q), stats_of(ctx, k), stats_of(ctx, v)
    cross = space.track_cross and space.B > 1
    dh, dv = q.rid.shape[-1], v.rid.shape[-1]
    n_out = int(np.prod(out.shape) // max(len(torch.unique(out_rid)), 1))
    draws = _Draws(ctx, sq, sk, sv, pq, pk, dh, dv, cross, q is k)
    total = sum(c for _, c in reps)
    T = space.T
    A = np.zeros((T, T))
    C = np.zeros((T, T)) if cross else None
    mu = np.zeros(T)
    for m, c in reps:
        y = draws.forward(m, scale, keep)  # (M, E, T1, dv)
        w = c / total
        A[np.ix_(pq, pq)] += (
            w * torch.einsum("metd,mesd->ts", y, y).numpy() / (y.shape[0] * y.shape[1] * dv)
        )
        mu[pq] += w * y.mean(dim=(0, 1, 3)).numpy()
        if cross:
            cc = torch.einsum("mtd,msd->ts", y[:, 0], y[:, 1]).numpy() / (y.shape[0] * dv)
            C[np.ix_(pq, pq)] += w * 0.5 * (cc + cc.T)
    present = np.zeros(T, dtype=bool)
    present[pq] = True
    field = Field(
        stats=Stats(A=A, C=C, mu=mu, present=present),
        rid=out_rid,
        lineage=q.lineage | k.lineage | v.lineage,
        token=v.token,
    )
    n_q = int(np.prod(q.rid.shape) // max(len(torch.unique(q.rid)), 1))
    n_k = int(np.prod(k.rid.shape) // max(len(torch.unique(k.rid)), 1))
    n_v = int(np.prod(v.rid.shape) // max(len(torch.unique(v.rid)), 1))

    def backward(gs):
        gy = gs[0]
        ga = gy.GA[np.ix_(pq, pq)] / n_out
        gc = gy.GC[np.ix_(pq, pq)] / n_out if (cross and gy.GC is not None) else None
        res = {key: [np.zeros((T, T)), np.zeros((T, T)) if cross else None] for key in "qkv"}
        for m, c in reps:
            w = c / total
            grads = draws.backward(m, scale, keep, ga, gc)
            for key, pos, n in (("q", pq, n_q), ("k", pk, n_k), ("v", pk, n_v)):
                d = grads[key]  # (M, E, T, features)
                res[key][0][np.ix_(pos, pos)] += (
                    w
                    * n
                    * torch.einsum("metd,mesd->ts", d, d).numpy()
                    / (d.shape[0] * d.shape[1] * d.shape[3])
                )
                if cross:
                    cc = torch.einsum("mtd,msd->ts", d[:, 0], d[:, 1]).numpy() / (
                        d.shape[0] * d.shape[3]
                    )
                    res[key][1][np.ix_(pos, pos)] += w * n * 0.5 * (cc + cc.T)
        out_g = [
            Grad(res["q"][0], res["q"][1]),
            Grad(res["k"][0], res["k"][1]),
            Grad(res["v"][0], res["v"][1]),
        ]
        if q is k:
            out_g[0] = out_g[0].add(out_g[1])
            out_g[1] = None
        return out_g

    ctx.record([q, k, v], [field], backward)
    return field


class _Draws:
    """Fixed-seed Gaussian draws of one head's queries, keys and values (E examples)."""

    def __init__(self, ctx, sq, sk, sv, pq, pk, dh, dv, cross, shared):
        self.M = ctx.samples
        self.E = 2 if cross else 1
        self.gen_seed = ctx.seed * 7919 + len(ctx.tape)
        self.q = self._draw(sq, pq, dh, cross, 1)
        self.k = self.q if shared else self._draw(sk, pk, dh, cross, 2)
        self.v = self._draw(sv, pk, dv, cross, 3)

    def _factor(self, st: Stats, pos: np.ndarray, cross: bool) -> tuple[torch.Tensor, torch.Tensor]:
        mu = st.mu[pos]
        within = st.A[np.ix_(pos, pos)] - np.outer(mu, mu)
        if cross:
            across = st.C[np.ix_(pos, pos)] - np.outer(mu, mu)
            cov = np.block([[within, across], [across, within]])
            mean = np.concatenate([mu, mu])
        else:
            cov, mean = within, mu
        w, U = np.linalg.eigh(0.5 * (cov + cov.T))
        L = U * np.sqrt(np.clip(w, 0.0, None))
        return torch.from_numpy(L), torch.from_numpy(mean)

    def _draw(self, st: Stats, pos: np.ndarray, d: int, cross: bool, salt: int) -> torch.Tensor:
        L, mean = self._factor(st, pos, cross)
        gen = torch.Generator().manual_seed(self.gen_seed * 10 + salt)
        z = torch.randn(self.M, L.shape[0], d, generator=gen, dtype=torch.float64)
        x = mean[None, :, None] + torch.einsum("ij,mjd->mid", L, z)
        return x.reshape(self.M, self.E, len(pos), d)

    def _attend(self, q, k, v, mask, scale, keep, salt):
        s = scale * torch.einsum("metd,mesd->mets", q, k)
        if mask is not None:
            s = s + mask
        p = torch.softmax(s, dim=-1)
        p = torch.nan_to_num(p, nan=0.0)
        if keep < 1.0:
            gen = torch.Generator().manual_seed(self.gen_seed * 10 + salt)
            p = p * (torch.rand(p.shape, generator=gen, dtype=torch.float64) < keep) / keep
        return torch.einsum("mets,mesd->metd", p, v)

    def forward(self, mask, scale, keep):
        return self._attend(self.q, self.k, self.v, mask, scale, keep, 5)

    def backward(self, mask, scale, keep, ga, gc):
        T1 = ga.shape[0]
        if gc is not None:
            cov = np.block([[ga, gc], [gc, ga]])
        else:
            cov = ga
        w, U = np.linalg.eigh(0.5 * (cov + cov.T))
        L = torch.from_numpy(U * np.sqrt(np.clip(w, 0.0, None)))
        gen = torch.Generator().manual_seed(self.gen_seed * 10 + 9)
        dv = self.v.shape[-1]
        z = torch.randn(self.M, L.shape[0], dv, generator=gen, dtype=torch.float64)
        dy = torch.einsum("ij,mjd->mid", L, z).reshape(self.M, self.E, T1, dv)
        q = self.q.clone().requires_grad_(True)
        k = q if self.k is self.q else self.k.clone().requires_grad_(True)
        v = self.v.clone().requires_grad_(True)
        with torch.enable_grad():
            y = self._attend(q, k, v, mask, scale, keep, 5)
            dq, dk, dvv = torch.autograd.grad((y * dy).sum(), [q, k, v], allow_unused=True)
        z0 = torch.zeros_like
        dq = z0(q) if dq is None else dq
        dk = z0(self.k) if (dk is None or self.k is self.q) else dk
        return {"q": dq.detach(), "k": dk.detach(), "v": dvv.detach()}


RULES = {
    "_softmax": softmax,
    "_safe_softmax": softmax,
    "softmax": softmax,
    "_scaled_dot_product_flash_attention_for_cpu": sdpa,
    "_scaled_dot_product_flash_attention": sdpa,
    "_scaled_dot_product_efficient_attention": sdpa,
    "_scaled_dot_product_cudnn_attention": sdpa,
}
