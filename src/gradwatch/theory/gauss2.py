"""Gaussian expectations of pairs of elementwise functions, for the mean-field kernels.

For two jointly Gaussian pre-activations (the same feature at two rows, positions or examples)

    (u1, u2) ~ N((μ1, μ2), [[v1, c], [c, v2]]),

the kernel maps of mean-field theory need E[f(u1) g(u2)] (forward: f = g = φ; backward:
f = g = φ'). Written with u1 = μ1 + s1 z1, u2 = m2(z1) + s2 z2, where s1 = √v1,
m2(z1) = μ2 + (c/s1) z1 and s2 = √(v2 − c²/v1), it is the nested integral

    ∫Dz1 f(u1) ∫Dz2 g(m2(z1) + s2 z2),

computed like :mod:`gradwatch.theory.quadrature` computes the equal-variance case: each line
is split where the integrand bends (z = 0, ±4 for the Gaussian; x = 0, ±3 for saturating
activations, mapped to z) and at the functions' kinks (ReLU's 0, hard_tanh's ±1), and each
piece is integrated by Gauss–Legendre with the Gaussian density folded into the weights.
Plain Gauss–Hermite is off by 1–2% for E[relu'(u1) relu'(u2)] (a step function), which
compounds over depth; with the kinks split it is exact to ~1e-10.

Pairs whose conditional spread s2 vanishes (u2 a function of u1: the diagonal of a kernel)
go through the 1-D rule E[f(u) g(u)].

References: Poole et al. 2016 and Schoenholz et al. 2017 (the kernel maps); Davis &
Rabinowitz 1984, "Methods of Numerical Integration" (compound Gauss rules at
singularities).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from gradwatch.theory.quadrature import split_rule

#: Bends of saturating activations (in x), besides the functions' own kinks.
X_BENDS = (-3.0, 0.0, 3.0)
#: Bends of the Gaussian (in z).
Z_BENDS = (-4.0, 0.0, 4.0)
#: Gauss–Legendre nodes per piece: 1-D rule, outer and inner lines of the 2-D rule.
NODES_1D = 48
NODES_OUTER = 12
NODES_INNER = 8
#: Conditional spread below this share of √v2 counts as u2 = m2(u1) (a 1-D integral).
DEGENERATE = 1e-7
#: Pairs per block of the 2-D rule (keeps the node arrays near 10 MB).
CHUNK = 256

Fn = Callable[[np.ndarray], np.ndarray]


def _breaks(points: np.ndarray, mu: np.ndarray, s: np.ndarray) -> np.ndarray:
    """x-space points mapped to z = (x − μ)/s, shape (P, K); ±inf where s = 0."""
    if points.size == 0:
        return np.zeros((mu.shape[0], 0))
    with np.errstate(divide="ignore", invalid="ignore"):
        z = (points[None, :] - mu[:, None]) / s[:, None]
    return np.where(np.isfinite(z), z, np.inf)


def expect1(f: Fn, g: Fn, mu: np.ndarray, v: np.ndarray, kinks: Sequence[float] = ()) -> np.ndarray:
    """Return E[f(u) g(u)] for u ~ N(μ, v), elementwise over the arrays μ and v.

    Args:
        f: an elementwise numpy function (vectorised).
        g: another one.
        mu: means, shape (P,).
        v: variances, shape (P,), >= 0.
        kinks: x-locations where f or g is not smooth.

    Returns:
        shape (P,).
    """
    mu = np.asarray(mu, dtype=np.float64).ravel()
    v = np.maximum(np.asarray(v, dtype=np.float64).ravel(), 0.0)
    s = np.sqrt(v)
    pts = np.array(sorted(set(X_BENDS) | set(kinks)), dtype=np.float64)
    zb = np.broadcast_to(np.array(Z_BENDS), (mu.size, len(Z_BENDS)))
    z, w = split_rule(np.concatenate([_breaks(pts, mu, s), zb], axis=1), NODES_1D)
    u = mu[:, None] + s[:, None] * z
    return np.einsum("pi,pi->p", f(u) * g(u), w)


def expect2(
    f: Fn,
    g: Fn,
    mu1: np.ndarray,
    v1: np.ndarray,
    mu2: np.ndarray,
    v2: np.ndarray,
    cov: np.ndarray,
    kinks_f: Sequence[float] = (),
    kinks_g: Sequence[float] = (),
) -> np.ndarray:
    """Return E[f(u1) g(u2)] for jointly Gaussian (u1, u2), elementwise over pairs.

    Args:
        f: an elementwise numpy function (vectorised), of u1.
        g: another one, of u2.
        mu1: means of u1, shape (P,).
        v1: variances of u1, shape (P,).
        mu2: means of u2, shape (P,).
        v2: variances of u2, shape (P,).
        cov: covariances of (u1, u2), shape (P,), clipped to the Cauchy–Schwarz bound.
        kinks_f: x-locations where f is not smooth.
        kinks_g: x-locations where g is not smooth.

    Returns:
        shape (P,).
    """
    mu1, v1, mu2, v2, cov = (
        np.asarray(a, dtype=np.float64).ravel() for a in (mu1, v1, mu2, v2, cov)
    )
    v1, v2 = np.maximum(v1, 0.0), np.maximum(v2, 0.0)
    bound = np.sqrt(v1 * v2)
    cov = np.clip(cov, -bound, bound)
    out = np.empty(mu1.size)
    s1 = np.sqrt(v1)
    with np.errstate(divide="ignore", invalid="ignore"):
        slope = np.where(s1 > 0, cov / s1, 0.0)  # m2 = μ2 + slope · z1
    s2 = np.sqrt(np.maximum(v2 - slope * slope, 0.0))
    degenerate = s2 <= DEGENERATE * np.sqrt(np.maximum(v2, 1e-300))
    # u2 = μ2 + slope z1 exactly: a 1-D integral over z1
    if degenerate.any():
        d = np.flatnonzero(degenerate)
        out[d] = _expect_linked(f, g, mu1[d], s1[d], mu2[d], slope[d], kinks_f, kinks_g)
    rest = np.flatnonzero(~degenerate)
    for lo in range(0, rest.size, CHUNK):
        i = rest[lo : lo + CHUNK]
        out[i] = _expect_nested(f, g, mu1[i], s1[i], mu2[i], slope[i], s2[i], kinks_f, kinks_g)
    return out


def _expect_linked(f, g, mu1, s1, mu2, slope, kinks_f, kinks_g) -> np.ndarray:
    """E[f(μ1 + s1 z) g(μ2 + slope z)] over z ~ N(0, 1)."""
    pf = np.array(sorted(set(X_BENDS) | set(kinks_f)), dtype=np.float64)
    pg = np.array(sorted(set(X_BENDS) | set(kinks_g)), dtype=np.float64)
    zb = np.broadcast_to(np.array(Z_BENDS), (mu1.size, len(Z_BENDS)))
    breaks = np.concatenate([_breaks(pf, mu1, s1), _breaks(pg, mu2, slope), zb], axis=1)
    z, w = split_rule(breaks, NODES_1D)
    u1 = mu1[:, None] + s1[:, None] * z
    u2 = mu2[:, None] + slope[:, None] * z
    return np.einsum("pi,pi->p", f(u1) * g(u2), w)


def _expect_nested(f, g, mu1, s1, mu2, slope, s2, kinks_f, kinks_g) -> np.ndarray:
    pf = np.array(sorted(set(X_BENDS) | set(kinks_f)), dtype=np.float64)
    pg = np.array(sorted(set(X_BENDS) | set(kinks_g)), dtype=np.float64)
    zb = np.broadcast_to(np.array(Z_BENDS), (mu1.size, len(Z_BENDS)))
    outer = np.concatenate([_breaks(pf, mu1, s1), zb], axis=1)
    z1, w1 = split_rule(outer, NODES_OUTER)  # (P, M1)
    u1 = mu1[:, None] + s1[:, None] * z1
    m2 = mu2[:, None] + slope[:, None] * z1  # (P, M1)
    # where u2 = m2 + s2 z2 crosses g's breakpoints, for each outer node
    inner_pts = (pg[None, None, :] - m2[:, :, None]) / s2[:, None, None]
    zb2 = np.broadcast_to(np.array(Z_BENDS), m2.shape + (len(Z_BENDS),))
    z2, w2 = split_rule(np.concatenate([inner_pts, zb2], axis=2), NODES_INNER)  # (P, M1, M2)
    u2 = m2[:, :, None] + s2[:, None, None] * z2
    inner = np.einsum("pij,pij->pi", g(u2), w2)
    return np.einsum("pi,pi->p", f(u1) * inner, w1)
