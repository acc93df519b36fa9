"""Moments of an elementwise function of a mean-field signal, forward and backward.

For a Field x with moments (A, C, mu) and y = f(x) elementwise, each feature of two rows
(t, t') is a jointly Gaussian pair in the wide limit, so

    A_y[t, t'] = E[f(u_t) f(u_t')],   (u_t, u_t') ~ N((μ_t, μ_t'), [[v_t, κ], [κ, v_t']]),
    κ = A[t, t'] − μ_t μ_t',   v_t = A[t, t] − μ_t²,

and the same with C for two examples; mu_y[t] = E[f(u_t)]. Going back, δx = f'(x) δy and the
gradient is independent of the forward signal (Schoenholz et al. 2017's assumption), so

    GA_x[t, t'] = E[f'(u_t) f'(u_t')] · GA_y[t, t'].

For one row this is the classic length map q → E[φ(√q z)²] and the factor E[φ'²] of χ1.
An affine f (a residual scale α, the 1/√d of attention) is done in closed form.

References: Poole et al. 2016; Schoenholz et al. 2017, "Deep Information Propagation".
"""

from __future__ import annotations

import numpy as np
import torch

from gradwatch.theory import draws as law
from gradwatch.theory.gauss2 import expect1, expect2
from gradwatch.theory.values import Context, Field, Grad, Lazy, Stats, present_positions


def numpy_fn(fn):
    """An elementwise torch function as a numpy one (float64)."""

    def f(x: np.ndarray) -> np.ndarray:
        return fn(torch.from_numpy(np.ascontiguousarray(x))).detach().numpy()

    return f


def numpy_grad(fn):
    """The derivative of an elementwise torch function, by autograd, as a numpy function."""

    def df(x: np.ndarray) -> np.ndarray:
        xt = torch.from_numpy(np.ascontiguousarray(x)).requires_grad_(True)
        with torch.enable_grad():
            y = fn(xt)
            if not y.requires_grad:
                return np.zeros_like(x)
            (g,) = torch.autograd.grad(y.sum(), xt, allow_unused=True)
        return np.zeros_like(x) if g is None else g.detach().numpy()

    return df


def _pairs(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs (t <= t') of the upper triangle among present positions."""
    idx = np.flatnonzero(mask)
    i, j = np.triu_indices(len(idx))
    return idx[i], idx[j]


def pair_kernel(f, g, stats: Stats, cross: bool, kinks=(), need=None) -> np.ndarray:
    """The (T, T) matrix E[f(u_t) g(u_t')] within an example (or across two, ``cross``).

    ``need`` (bool (T, T)) restricts which pairs are computed (others are 0).
    """
    T = stats.A.shape[0]
    out = np.zeros((T, T))
    i, j = _pairs(stats.present)
    if need is not None:
        keep = need[i, j] | need[j, i]
        i, j = i[keep], j[keep]
    if not len(i):
        return out
    mu = stats.mu
    var = np.maximum(np.diag(stats.A) - mu * mu, 0.0)
    src = stats.C if cross else stats.A
    cov = src[i, j] - mu[i] * mu[j]
    vals = np.empty(len(i))
    diag = (i == j) & (not cross)
    if diag.any():
        d = np.flatnonzero(diag)
        vals[d] = expect1(f, g, mu[i[d]], var[i[d]], kinks)
    off = np.flatnonzero(~diag)
    if len(off):
        vals[off] = expect2(
            f, g, mu[i[off]], var[i[off]], mu[j[off]], var[j[off]], cov[off], kinks, kinks
        )
    out[i, j] = vals
    out[j, i] = vals
    return out


#: Names of a Lazy that is ReLU of its source (the arc-cosine kernel applies at zero mean).
RELU = (("relu",), ("relu_",))


def _zero_mean_relu(lazy: Lazy) -> bool:
    s = lazy.source.stats
    return lazy.names in RELU and not np.any(s.mu[s.present])


def relu_kernel(stats: Stats, cross: bool, deriv: bool) -> np.ndarray:
    """E[relu(u_t) relu(u_t')] (or of the steps, ``deriv``) for zero-mean Gaussian u.

    In closed form: the arc-cosine kernel of Cho & Saul 2009,
    √(v v')/(2π)·(sin θ + (π − θ) cos θ) and (π − θ)/(2π), cos θ the correlation.
    """
    T = stats.A.shape[0]
    p = np.flatnonzero(stats.present)
    v = np.diag(stats.A)[p]
    src = (stats.C if cross else stats.A)[np.ix_(p, p)]
    sd = np.sqrt(np.maximum(v, 0.0))
    norm = np.outer(sd, sd)
    with np.errstate(divide="ignore", invalid="ignore"):
        rho = np.where(norm > 0, src / norm, 0.0)
    theta = np.arccos(np.clip(rho, -1.0, 1.0))
    if deriv:
        k = np.where(norm > 0, (np.pi - theta) / (2 * np.pi), 0.0)
    else:
        k = norm / (2 * np.pi) * (np.sin(theta) + (np.pi - theta) * np.cos(theta))
    out = np.zeros((T, T))
    out[np.ix_(p, p)] = k
    return out


def materialize(ctx: Context, lazy: Lazy) -> Field:
    """The Field y = fn(source) of a :class:`Lazy`, with its moments (cached on it)."""
    cached = getattr(lazy, "_field", None)
    if cached is not None:
        return cached
    src = lazy.source
    s = src.stats
    present = present_positions(ctx.space, lazy.rid)
    carried = law.drawn(src) if getattr(src, "_not_gaussian", False) else None
    if carried is not None and lazy.affine is None:
        return _materialize_drawn(ctx, lazy, carried, present)
    if lazy.affine is not None:
        a, b = lazy.affine
        mu = a * s.mu + b
        A = a * a * s.A + a * b * (s.mu[:, None] + s.mu[None, :]) + b * b
        C = None
        if s.C is not None:
            C = a * a * s.C + a * b * (s.mu[:, None] + s.mu[None, :]) + b * b
    elif _zero_mean_relu(lazy):
        mu = np.where(s.present, np.sqrt(np.maximum(np.diag(s.A), 0.0) / (2 * np.pi)), 0.0)
        A = relu_kernel(s, cross=False, deriv=False)
        C = relu_kernel(s, cross=True, deriv=False) if s.C is not None else None
    else:
        f = numpy_fn(lazy.fn)
        kinks = lazy.kinks or ()
        var = np.maximum(np.diag(s.A) - s.mu * s.mu, 0.0)
        mu = np.zeros_like(s.mu)
        m = s.present
        mu[m] = expect1(f, lambda x: np.ones_like(x), s.mu[m], var[m], kinks)
        A = pair_kernel(f, f, s, cross=False, kinks=kinks)
        C = pair_kernel(f, f, s, cross=True, kinks=kinks) if s.C is not None else None
    out = Field(
        stats=Stats(A=A, C=C, mu=mu, present=present & s.present),
        rid=lazy.rid,
        lineage=src.lineage,
        token=src.token,
    )
    if carried is not None:  # an affine function of a drawn signal: draws scaled alike
        a, b = lazy.affine
        out._draws = law.Draws(carried.pos, a * carried.y + b)  # type: ignore[attr-defined]
        out._not_gaussian = True  # type: ignore[attr-defined]
    lazy._field = out
    return out


def _materialize_drawn(ctx: Context, lazy: Lazy, carried: law.Draws, present) -> Field:
    """A function of a signal carried by draws: moments and draws from it applied to them."""
    src = lazy.source
    y, _ = law.apply(lazy.fn, carried.y, slopes=False)
    st = law.stats_from(ctx, law.Draws(carried.pos, y), src.stats.C is not None)
    st.present = st.present & present
    out = Field(stats=st, rid=lazy.rid, lineage=src.lineage, token=src.token)
    out._draws = law.Draws(carried.pos, y)  # type: ignore[attr-defined]
    out._not_gaussian = True  # type: ignore[attr-defined]
    lazy._field = out
    return out


def lazy_backward(lazy: Lazy, grad: Grad) -> Grad:
    """Gradient at ``lazy.source`` from the gradient at fn(source)."""
    s = lazy.source.stats
    if lazy.affine is not None:
        a = lazy.affine[0]
        return grad.scaled(a * a)
    drawn = law.drawn(lazy.source)
    if drawn is not None:  # a stream carried by draws: the slopes per draw (masks)
        _, d = law.apply(lazy.fn, drawn.y)
        return law.masked(grad, d, drawn.pos, s.A.shape[0], s.C is not None)
    if _zero_mean_relu(lazy):
        ga = relu_kernel(s, cross=False, deriv=True) * grad.GA
        gc = None
        if grad.GC is not None and s.C is not None:
            gc = relu_kernel(s, cross=True, deriv=True) * grad.GC
        return Grad(ga, gc)
    df = numpy_grad(lazy.fn)
    kinks = lazy.kinks or ()
    ga = pair_kernel(df, df, s, cross=False, kinks=kinks, need=grad.GA != 0) * grad.GA
    gc = None
    if grad.GC is not None and s.C is not None:
        gc = pair_kernel(df, df, s, cross=True, kinks=kinks, need=grad.GC != 0) * grad.GC
    return Grad(ga, gc)
