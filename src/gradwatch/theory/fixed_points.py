"""Fixed points of the mean-field length and correlation maps, on flat arrays of (σw², σb²).

Length map (variance of a pre-activation, layer to layer):

    q^l = σw² ∫Dz φ(√q^{l−1} z)² + σb²,

iterated from q = 1 to its fixed point q*, with closed forms where they exist: for
piecewise-linear homogeneous φ (relu, leaky_relu, linear, slopes a and b)
q^l = σw² (a² + b²)/2 q^{l−1} + σb², so q* = σb² / (1 − σw² (a² + b²)/2), and q* = ∞
when σw² (a² + b²)/2 ≥ 1; for tanh-like φ with σb² = 0 and σw² φ'(0)² ≤ 1, q* = 0.

Correlation map of two inputs, normalised so that it maps c = 1 to exactly 1 on the grid:

    c^l = [σw² ∫Dz1 Dz2 φ(u1) φ(u2) + σb²] / [σw² ∫Dz φ(u1)² + σb²],
    u1 = √q* z1,  u2 = √q* (c z1 + √(1 − c²) z2),

whose slope is dc^l/dc = σw² q* ∫Dz1 Dz2 φ'(u1) φ'(u2) / q* = χ_c(c) at q = q*.

Every function here takes flat float64 arrays and returns flat arrays; checks and shapes
live in the public functions.

References: Poole et al. 2016, "Exponential expressivity in deep neural networks through
transient chaos"; Schoenholz et al. 2017, "Deep Information Propagation".
"""

from __future__ import annotations

import math

import numpy as np
from scipy.optimize import brentq

from gradwatch.theory.activations import Activation
from gradwatch.theory.quadrature import correlated_rule, expect, gaussian_rule

#: A length above this is taken as divergent: q* = ∞.
Q_MAX = 1e12
#: Where limits as q → ∞ are evaluated (χ1 of an activation whose length map diverges).
Q_BIG = 1e8
#: A length below this, with σb² = 0, is taken as the fixed point q* = 0.
Q_TINY = 1e-14
#: Where limits as q → 0+ are evaluated (χ1 and ξ_q at q* = 0).
Q_EVAL_MIN = 1e-20
#: Vectorised iterations before the slow points are finished one by one with brentq.
MAX_ITER = 300
#: χ1 above 1 + this is chaotic for the purpose of looking for a fixed point c* < 1.
CHAOS_MARGIN = 1e-9
#: Points per block of the 2-D quadrature (about 1M nodes, 8 MB per array).
CHUNK = 64


def mean_sq_homogeneous(act: Activation) -> float:
    """Return ∫Dz φ(z)² = ∫Dz φ'(z)² = (a² + b²)/2 for a homogeneous φ with slopes a, b."""
    assert act.slopes is not None
    a, b = act.slopes
    return (a * a + b * b) / 2


def length_map(act: Activation, sw2: np.ndarray, sb2: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Return σw² ∫Dz φ(√q z)² + σb² for finite q >= 0."""
    x, w = gaussian_rule(q, act.kinks)  # (points, nodes)
    phi = act(x)
    return sw2 * expect(phi * phi, w) + sb2


def q_star(act: Activation, sw2: np.ndarray, sb2: np.ndarray) -> np.ndarray:
    """Return the fixed point q* of the length map reached from q = 1 (∞ when it diverges)."""
    n = sw2.size
    if act.homogeneous:
        slope = sw2 * mean_sq_homogeneous(act)
        q = np.full(n, np.inf)
        ok = slope < 1
        q[ok] = sb2[ok] / (1 - slope[ok])
        return q
    q = np.ones(n)
    todo = np.ones(n, dtype=bool)
    if act.odd_saturating:
        d0 = act.derivatives(np.zeros(1), order=1)[1][0]
        zero = (sb2 == 0) & (sw2 * d0 * d0 <= 1)
        q[zero] = 0.0
        todo &= ~zero
    idx = np.flatnonzero(todo)
    for _ in range(MAX_ITER):
        if idx.size == 0:
            break
        q_old = q[idx]
        q_new = length_map(act, sw2[idx], sb2[idx], q_old)
        diverged = ~(q_new <= Q_MAX)
        vanished = (q_new < Q_TINY) & (sb2[idx] == 0)
        q_new[diverged] = np.inf
        q_new[vanished] = 0.0
        q[idx] = q_new
        converged = np.abs(q_new - q_old) <= 1e-14 * q_new
        idx = idx[~(diverged | vanished | converged)]
    for i in idx:
        q[i] = _polish_q(act, sw2[i], sb2[i], q[i])
    return q


def _polish_q(act: Activation, sw2: float, sb2: float, q0: float) -> float:
    """Finish a slowly converging length iteration: bracket the next root, then brentq."""

    def g(q: float) -> float:
        return float(length_map(act, np.array([sw2]), np.array([sb2]), np.array([q]))[0]) - q

    g0 = g(q0)
    if g0 == 0:
        return q0
    if g0 > 0:  # still growing: the fixed point lies above, or there is none
        lo, hi = q0, 2 * q0
        while g(hi) > 0:
            lo, hi = hi, 2 * hi
            if hi > Q_MAX:
                return math.inf
    else:  # shrinking: the fixed point lies below, or it is 0
        hi, lo = q0, q0 / 2
        while g(lo) < 0:
            hi, lo = lo, lo / 2
            if lo < Q_TINY:
                return 0.0
    return brentq(g, lo, hi, xtol=1e-300, rtol=1e-15)


def gaussian_moments(act: Activation, q: np.ndarray, order: int = 1) -> list[np.ndarray]:
    """Return [∫Dz φ², ∫Dz φ'², ∫Dz φ''φ][: order + 1] at √q z, for finite q >= 0."""
    x, w = gaussian_rule(q, act.kinks)
    d = act.derivatives(x, order=order)
    out = [expect(d[0] * d[0], w)]
    if order >= 1:
        out.append(expect(d[1] * d[1], w))
    if order >= 2:
        out.append(expect(d[2] * d[0], w))
    return out


def _q_eval(q: np.ndarray) -> np.ndarray:
    """Where to evaluate a q*-dependent integral: the limits q → 0+ and q → ∞ at 0 and ∞."""
    return np.clip(q, Q_EVAL_MIN, Q_BIG)


def chi1(act: Activation, sw2: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Return χ1 = σw² ∫Dz φ'(√q* z)² (as q → 0+ at q* = 0, at q = Q_BIG at q* = ∞).

    The limit q → 0+ (rather than q = 0) averages the two sides of a kink at 0 (SELU).
    """
    if act.homogeneous:
        return sw2 * mean_sq_homogeneous(act)
    return sw2 * gaussian_moments(act, _q_eval(q), order=1)[1]


def length_slope(act: Activation, sw2: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Return dq^l/dq^{l−1} at q*: σw² ∫Dz φ'(√q* z)² + φ''(√q* z) φ(√q* z) (∞ at q* = ∞).

    Computed as σw² ∫Dz z φ(√q z) φ'(√q z) / √q, equal by Gaussian integration by parts
    but needing no φ'', so kinks away from 0 (hard_tanh at ±1) count correctly.
    """
    if act.homogeneous:
        slope = np.broadcast_to(sw2 * mean_sq_homogeneous(act), q.shape).copy()
    else:
        qe = _q_eval(q)
        x, w = gaussian_rule(qe, act.kinks)
        phi, dphi = act.derivatives(x, order=1)
        slope = sw2 * expect(phi * dphi * x, w) / qe
    return np.where(np.isinf(q), np.inf, slope)


def correlation_map(
    act: Activation,
    sw2: np.ndarray,
    sb2: np.ndarray,
    q: np.ndarray,
    c: np.ndarray,
    slope: bool = False,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Return the normalised correlation map at c, and its slope χ_c(c) if asked.

    All arrays are flat with one entry per point; q must be finite and > 0. The 2-D
    integral is nested, ∫Dz1 φ(u1) ∫Dz2 φ(u2) (see ``quadrature.correlated_rule``).
    """
    f_out = np.empty(sw2.size)
    s_out = np.empty(sw2.size) if slope else None
    order = 1 if slope else 0
    for start in range(0, sw2.size, CHUNK):
        sl = slice(start, start + CHUNK)
        u1, w1, u2, w2 = correlated_rule(q[sl], c[sl], act.kinks)
        d1 = act.derivatives(u1, order=order)  # (points, m1)
        d2 = act.derivatives(u2, order=order)  # (points, m1, m2)
        den = sw2[sl] * expect(d1[0] * d1[0], w1) + sb2[sl]
        inner = expect(d2[0], w2)  # (points, m1): ∫Dz2 φ(u2) for each z1
        f_out[sl] = (sw2[sl] * expect(d1[0] * inner, w1) + sb2[sl]) / den
        if slope:
            inner_d = expect(d2[1], w2)
            s_out[sl] = sw2[sl] * q[sl] * expect(d1[1] * inner_d, w1) / den
    return f_out, s_out


def c_star(
    act: Activation, sw2: np.ndarray, sb2: np.ndarray, q: np.ndarray, chi: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Return (c*, χ_c) given q* and χ1.

    Ordered or critical (χ1 <= 1): c* = 1 and χ_c = χ1. Chaotic with finite q*: the stable
    fixed point c* < 1 of the correlation map, reached from c = 0.5 by safeguarded Newton
    steps on c^l(c) − c (plain map steps where Newton is unsafe; brentq for stragglers),
    and χ_c its slope there. Chaotic with q* = ∞ (the length diverges, so the
    bias is negligible and a linearly growing φ makes the map marginal at 1): c* = 1,
    χ_c = 1.
    """
    n = sw2.size
    c = np.ones(n)
    chi_c = chi.astype(np.float64).copy()
    chaotic = chi > 1 + CHAOS_MARGIN
    chi_c[chaotic & np.isinf(q)] = 1.0
    idx = np.flatnonzero(chaotic & np.isfinite(q) & (q > 0))
    if idx.size == 0:
        return c, chi_c
    cur = np.full(idx.size, 0.5)
    active = np.arange(idx.size)
    for _ in range(MAX_ITER):
        if active.size == 0:
            break
        i = idx[active]
        c0 = cur[active]
        f, s = correlation_map(act, sw2[i], sb2[i], q[i], c0, slope=True)
        g = f - c0
        # Converged only at a stable root: c = 1 is a root too, but unstable (slope χ1 > 1).
        done = (np.abs(g) <= 1e-14) & (s < 1)
        with np.errstate(divide="ignore", invalid="ignore"):
            newton = c0 - g / (s - 1)
        # Newton where it heads the way the map pushes; never more than halfway to ±1, so
        # that it cannot land on the unstable roots; the plain map step otherwise.
        ok = (s < 1) & np.isfinite(newton) & (np.sign(newton - c0) == np.sign(g))
        step = np.where(ok, np.clip(newton, (c0 - 1) / 2, (c0 + 1) / 2), f)
        cur[active] = np.where(done, c0, step)
        active = active[~done]
    for k in active:
        i = idx[k]
        cur[k] = _polish_c(act, sw2[i], sb2[i], q[i], cur[k])
    c[idx] = cur
    _, s = correlation_map(act, sw2[idx], sb2[idx], q[idx], cur, slope=True)
    chi_c[idx] = s
    return c, chi_c


def _polish_c(act: Activation, sw2: float, sb2: float, q: float, c0: float) -> float:
    """Finish a slowly converging correlation iteration: bracket toward ±1, then brentq."""
    args = (np.array([sw2]), np.array([sb2]), np.array([q]))

    def g(c: float) -> float:
        return float(correlation_map(act, *args, np.array([c]))[0][0]) - c

    g0 = g(c0)
    if g0 == 0:
        return c0
    if g0 > 0:  # the map pushes c up: the root lies between c0 and 1
        lo = c0
        for _ in range(60):
            hi = lo + (1 - lo) / 2
            if g(hi) < 0:
                break
            lo = hi
        else:
            return 1.0
    else:
        hi = c0
        for _ in range(60):
            lo = hi - (hi + 1) / 2
            if g(lo) > 0:
                break
            hi = lo
        else:
            return -1.0
    return brentq(g, lo, hi, xtol=1e-15, rtol=1e-15)
