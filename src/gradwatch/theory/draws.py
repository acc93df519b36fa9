"""The law of a signal that is not Gaussian, carried as fixed-seed draws of one feature.

A weight matrix makes a signal Gaussian (a sum over its fan-in), so mean-field theory
describes most signals by their second moments. A residual stream that carries a
nonlinearity's output is not: in the original ResNet of He et al. 2016 each block computes
x_{l+1} = ReLU(x_l + b_l), and in a stream that starts at a max pooling x_0 is a maximum.
The branch b_l still ends with a weight matrix (and a BatchNorm), so over the random
weights it is a Gaussian field independent of x_l, with the moments the rules compute; each
feature of the stream is then a Markov chain x_{l+1} = ReLU(x_l + b_l) driven by Gaussian
fields, whose law the rules carry exactly as a sample of it: ``DRAWS`` independent features,
each one the whole batch (B examples, all positions jointly, so the correlations between
positions and between examples that convolutions and BatchNorm read come with it).

From the draws come what the other rules need: the second moments A, C and the mean of the
signal, and going back the moments E[f'(u_t) f'(u_t')] of an elementwise function's slope
(the ReLU's active fraction, and its correlation between positions). This is numerical
integration of the theory's law (as for max pooling and attention), not a run of the model.

References: He et al. 2016, "Deep Residual Learning for Image Recognition"; Yang &
Schoenholz 2017 (mean-field residual networks); Yang et al. 2019 (batch norm at init).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from gradwatch.theory.values import Context, Stats

#: Numbers drawn per signal (features × examples × positions): the draws' moments are
#: within about 0.1% of the law's at this size (a feature's examples share its channel-level
#: randomness, so the number of features drawn is what counts).
DRAW_ELEMENTS = 1 << 21


@dataclass
class Draws:
    """Samples ``y`` (M, B, n) of one feature at the present positions ``pos`` (sorted)."""

    pos: np.ndarray
    y: np.ndarray


def draw_count(B: int, n: int) -> int:
    """Independent features drawn, for a batch of B examples at n positions."""
    return max(64, DRAW_ELEMENTS // max(B * n, 1))


def sqrt_psd(M: np.ndarray) -> np.ndarray:
    """A square root L (L Lᵀ = M) of the positive part of a symmetric matrix."""
    w, v = np.linalg.eigh(0.5 * (M + M.T))
    return v * np.sqrt(np.clip(w, 0.0, None))


def gaussian(ctx: Context, st: Stats, pos: np.ndarray, salt: int = 0) -> np.ndarray:
    """Draws (M, B, n) of a Gaussian signal with moments ``st`` at positions ``pos``."""
    B = ctx.space.B
    M = draw_count(B, len(pos))
    A = st.A[np.ix_(pos, pos)]
    mu = st.mu[pos]
    C = st.C[np.ix_(pos, pos)] if st.C is not None else np.outer(mu, mu)
    gen = np.random.default_rng([ctx.seed, len(ctx.tape), salt, 4421])
    n = len(pos)
    # covariance I_B ⊗ (A − C) + 11ᵀ ⊗ (C − μμᵀ): PSD even where C − μμᵀ is not (a batch
    # norm makes examples anti-correlated), so draw its two eigenspaces over the examples:
    # the contrasts between examples, and their mean with (A − C) + B (C − μμᵀ)
    w = gen.standard_normal((M, B, n)) @ sqrt_psd(A - C).T
    w -= w.mean(axis=1, keepdims=True)
    k1 = (A - C) + B * (C - np.outer(mu, mu))
    w += (gen.standard_normal((M, 1, n)) @ sqrt_psd(k1).T) / np.sqrt(B)
    return w + mu


def apply(fn, u: np.ndarray, slopes: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
    """fn(u) and (``slopes``) fn'(u), elementwise (autograd through the torch function)."""
    xt = torch.from_numpy(np.ascontiguousarray(u))
    if not slopes:
        with torch.no_grad():
            y = fn(xt).to(torch.float64).numpy()
        return (y if y.shape == u.shape else np.broadcast_to(y, u.shape).copy()), None
    xt.requires_grad_(True)
    with torch.enable_grad():
        yt = fn(xt)
        g = None
        if yt.requires_grad:
            (g,) = torch.autograd.grad(yt.sum(), xt, allow_unused=True)
    y = yt.detach().to(torch.float64).numpy()
    d = np.zeros_like(u) if g is None else g.detach().numpy()
    return (y if y.shape == u.shape else np.broadcast_to(y, u.shape).copy()), d


def second_moments(y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Within-example A (n, n), across-example C (n, n) and mean (n,) of draws (M, B, n)."""
    M, B, _ = y.shape
    own = np.einsum("mbt,mbs->ts", y, y, optimize=True)
    A = own / (M * B)
    if B > 1:
        tot = y.sum(axis=1)
        C = (np.einsum("mt,ms->ts", tot, tot, optimize=True) - own) / (M * B * (B - 1))
        C = 0.5 * (C + C.T)
    else:
        mu = y.mean(axis=(0, 1))
        C = np.outer(mu, mu)
    return 0.5 * (A + A.T), C, y.mean(axis=(0, 1))


def embed(T: int, pos: np.ndarray, block: np.ndarray) -> np.ndarray:
    """A (T, T) matrix holding ``block`` at the rows and columns ``pos``."""
    out = np.zeros((T, T))
    out[np.ix_(pos, pos)] = block
    return out


def stats_from(ctx: Context, dr: Draws, track_cross: bool) -> Stats:
    """The Stats (over all T positions) of a signal given by its draws."""
    T = ctx.space.T
    A, C, mu = second_moments(dr.y)
    m = np.zeros(T)
    m[dr.pos] = mu
    present = np.zeros(T, dtype=bool)
    present[dr.pos] = True
    return Stats(
        A=embed(T, dr.pos, A), C=embed(T, dr.pos, C) if track_cross else None, mu=m,
        present=present,
    )


def slope_moments(d: np.ndarray, pos: np.ndarray, T: int) -> tuple[np.ndarray, np.ndarray]:
    """E[f'(u_t) f'(u_t')] within an example and across two, (T, T), from slope draws."""
    DA, DC, _ = second_moments(d)
    return embed(T, pos, DA), embed(T, pos, DC)


def of(ctx: Context, v, salt: int = 0) -> Draws | None:
    """Draws of a signal: carried ones, or sampled from its Gaussian law (None: not a signal).

    A Field without draws is Gaussian; a Lazy is its function applied to its source's draws.
    """
    from gradwatch.theory.values import Field, Lazy

    if isinstance(v, Lazy):
        src = of(ctx, v.source, salt)
        if src is None:
            return None
        y, _ = apply(v.fn, src.y, slopes=False)
        return Draws(src.pos, y)
    if not isinstance(v, Field):
        return None
    carried = drawn(v)
    if carried is not None:
        return carried
    if getattr(v, "_not_gaussian", False):
        return None
    pos = np.flatnonzero(v.stats.present)
    # kept, so that the slopes of a function of it going back are those of the same draws
    v._gdraws = Draws(pos, gaussian(ctx, v.stats, pos, salt))  # type: ignore[attr-defined]
    return v._gdraws


def drawn(v) -> Draws | None:
    """The draws a signal carries (its law, or draws of its Gaussian a sum was made from).

    A sum that carries a non-Gaussian signal makes its draws when first asked.
    """
    got = getattr(v, "_draws", None)
    if got is None and getattr(v, "_make_draws", None) is not None:
        got = v._make_draws()
        v._make_draws = None
        v._draws = got
    return got if got is not None else getattr(v, "_gdraws", None)


def masked(grad, d: np.ndarray, pos: np.ndarray, T: int, cross: bool):
    """The gradient at u from the gradient at f(u), u carried by draws, slopes ``d`` per draw.

    Each part of the gradient (:class:`~gradwatch.theory.values.Grad`) gets its mask times
    the slopes, draw by draw: along a residual stream the same coordinate's slopes are
    correlated from block to block (a coordinate that is positive tends to stay so), which
    E[f'f'] per block would miss. The moments of the gradient are the parts' masks'
    second moments times their gradients, summed.
    """
    from gradwatch.theory.values import Grad

    parts = []
    GA = np.zeros((T, T))
    GC = np.zeros((T, T)) if cross else None
    for ga, gc, m, mpos in grad.split():
        if m is not None and (m.shape[1:] != d.shape[1:] or not np.array_equal(mpos, pos)):
            ga, gc = apply_mask(ga, gc, m, mpos, T)  # masks of other coordinates: summed
            m = None
        k = d.shape[0] if m is None else min(d.shape[0], m.shape[0])
        mm = d[:k] if m is None else m[:k] * d[:k]
        ga_m, gc_m = apply_mask(ga, gc, mm, pos, T)
        GA += ga_m
        if cross:
            GC += gc_m if gc_m is not None else 0.0
        parts.append((ga, gc, mm, pos))
    return Grad(GA, GC, parts=tuple(parts))


def apply_mask(ga, gc, m: np.ndarray, pos: np.ndarray, T: int):
    """E[m_t m_t'] ⊙ GA within an example, and across two examples ⊙ GC."""
    MA, MC, _ = second_moments(m)
    return embed(T, pos, MA) * ga, (embed(T, pos, MC) * gc if gc is not None else None)
