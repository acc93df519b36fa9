"""Independent oracles for the mean-field tests: Monte Carlo and scipy adaptive quadrature.

Nothing here imports gradwatch: activations and their derivatives are written out by hand,
integrals are done by sampling (with a standard error) or by scipy.integrate.quad, and
fixed points by plain iteration or brentq.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import integrate, optimize, special

SQRT2PI = math.sqrt(2 * math.pi)


def _elu(x):
    return np.where(x > 0, x, np.expm1(np.minimum(x, 0.0)))


def _delu(x):
    return np.where(x > 0, 1.0, np.exp(np.minimum(x, 0.0)))


#: name -> (φ, φ'), by hand.
PHI = {
    "tanh": (np.tanh, lambda x: 1.0 - np.tanh(x) ** 2),
    "erf": (special.erf, lambda x: 2.0 / math.sqrt(math.pi) * np.exp(-x * x)),
    "sigmoid": (special.expit, lambda x: special.expit(x) * (1.0 - special.expit(x))),
    "gelu": (
        lambda x: x * special.ndtr(x),
        lambda x: special.ndtr(x) + x * np.exp(-x * x / 2) / SQRT2PI,
    ),
    "elu": (_elu, _delu),
    "hard_tanh": (lambda x: np.clip(x, -1.0, 1.0), lambda x: (np.abs(x) < 1).astype(float)),
    "relu": (lambda x: np.maximum(x, 0.0), lambda x: (x > 0).astype(float)),
}

#: Kinks of φ at √q z = k: breakpoints for quad.
KINKS = {"hard_tanh": (-1.0, 1.0), "relu": (0.0,), "elu": (0.0,)}


# ---------------------------------------------------------------- adaptive quadrature


def gauss_quad(f, q: float, kinks=()) -> float:
    """∫Dz f(√q z) = E f(X), X ~ N(0, q), by scipy.integrate.quad in x, piece by piece.

    Pieces end at the kinks, at x = 0, ±1, ±3 (where tanh-like functions bend) and at
    ±13√q, so that each piece is smooth and the adaptive rule resolves it.
    """
    if q == 0:
        return float(f(0.0))
    s = math.sqrt(q)

    def integrand(x):
        return f(x) * math.exp(-x * x / (2 * q)) / (s * SQRT2PI)

    inner = sorted({0.0, -1.0, 1.0, -3.0, 3.0, *kinks})
    edges = [-13 * s] + [p for p in inner if abs(p) < 13 * s] + [13 * s]
    return sum(
        integrate.quad(integrand, a, b, epsabs=0, epsrel=1e-13, limit=500)[0]
        for a, b in zip(edges[:-1], edges[1:], strict=True)
    )


def quad_length_map(name: str, sw2: float, sb2: float, q: float) -> float:
    phi, _ = PHI[name]
    return sw2 * gauss_quad(lambda x: float(phi(x)) ** 2, q, KINKS.get(name, ())) + sb2


def quad_q_star(name: str, sw2: float, sb2: float, lo: float = 0.0, hi: float = 200.0) -> float:
    """The fixed point of the length map by brentq (unique for bounded φ with σb² > 0)."""
    return optimize.brentq(
        lambda q: quad_length_map(name, sw2, sb2, q) - q, lo, hi, xtol=1e-15, rtol=1e-13
    )


def quad_chi1(name: str, sw2: float, q: float) -> float:
    _, dphi = PHI[name]
    return sw2 * gauss_quad(lambda x: float(dphi(x)) ** 2, q, KINKS.get(name, ()))


# ---------------------------------------------------------------- Monte Carlo


@dataclass
class Estimate:
    value: float
    se: float  # standard error (delta method)

    def agrees(self, other: float, k: float = 5.0) -> bool:
        return abs(self.value - other) <= k * self.se


def mc_q_star(name: str, sw2: float, sb2: float, n: int = 200_000, seed: int = 0) -> Estimate:
    """Iterate the length map with n fixed normal samples from q = 1 to convergence."""
    phi, _ = PHI[name]
    z = np.random.default_rng(seed).standard_normal(n)

    def length(q):
        return sw2 * np.mean(phi(math.sqrt(q) * z) ** 2) + sb2

    q = 1.0
    for _ in range(2000):
        q_new = length(q)
        if abs(q_new - q) <= 1e-15 * q_new:
            break
        q = q_new
    q = q_new
    h = 1e-4 * q
    slope = (length(q + h) - length(q - h)) / (2 * h)
    se_map = sw2 * np.std(phi(math.sqrt(q) * z) ** 2) / math.sqrt(n)
    return Estimate(q, se_map / (1 - slope))


def mc_chi1(name: str, sw2: float, q: Estimate, n: int = 200_000, seed: int = 1) -> Estimate:
    """σw² mean φ'(√q z)² at the Monte Carlo q*, with the error of q* carried along."""
    _, dphi = PHI[name]
    z = np.random.default_rng(seed).standard_normal(n)

    def chi(qq):
        return sw2 * dphi(math.sqrt(qq) * z) ** 2

    v = chi(q.value)
    h = 1e-4 * q.value
    dchi_dq = (np.mean(chi(q.value + h)) - np.mean(chi(q.value - h))) / (2 * h)
    return Estimate(float(np.mean(v)), float(np.std(v) / math.sqrt(n) + abs(dchi_dq) * q.se))


def mc_c_star(
    name: str,
    sw2: float,
    sb2: float,
    q: Estimate,
    bracket: tuple[float, float],
    n: int = 200_000,
    seed: int = 2,
) -> tuple[Estimate, Estimate]:
    """(c*, χ_c) from the sampled correlation map; brentq for its root in ``bracket``."""
    phi, dphi = PHI[name]
    rng = np.random.default_rng(seed)
    z1, z2 = rng.standard_normal(n), rng.standard_normal(n)

    def parts(c, qq):
        s = math.sqrt(qq)
        u1 = s * z1
        u2 = s * (c * z1 + math.sqrt(1 - c * c) * z2)
        return u1, u2

    def f(c, qq):
        u1, u2 = parts(c, qq)
        p1 = phi(u1)
        return (sw2 * np.mean(p1 * phi(u2)) + sb2) / (sw2 * np.mean(p1 * p1) + sb2)

    c = optimize.brentq(lambda cc: f(cc, q.value) - cc, *bracket, xtol=1e-14)
    u1, u2 = parts(c, q.value)
    p1, p2 = phi(u1), phi(u2)
    den = sw2 * np.mean(p1 * p1) + sb2
    chi_c_samples = sw2 * q.value * dphi(u1) * dphi(u2) / den
    chi_c = float(np.mean(chi_c_samples))
    # Error of the map at c* (ratio estimator), plus q*'s error, through 1/(1 − χ_c).
    resid = sw2 * (p1 * p2 - c * p1 * p1) / den
    h = 1e-4 * q.value
    df_dq = (f(c, q.value + h) - f(c, q.value - h)) / (2 * h)
    se_f = np.std(resid) / math.sqrt(n) + abs(df_dq) * q.se
    se_c = se_f / (1 - chi_c)

    def chi_c_at(cc):
        a1, a2 = parts(cc, q.value)
        return sw2 * q.value * np.mean(dphi(a1) * dphi(a2)) / den

    h = 1e-4
    dchi_dc = (chi_c_at(c + h) - chi_c_at(c - h)) / (2 * h)
    # Sampling error of the mean, plus c*'s error carried through dχ_c/dc.
    se_chi_c = np.std(chi_c_samples) / math.sqrt(n) + abs(dchi_dc) * se_c
    return Estimate(c, float(se_c)), Estimate(chi_c, float(se_chi_c))
