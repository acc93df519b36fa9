"""Gauss–Hermite quadrature for the Gaussian integrals of mean-field theory.

With nodes z_i and probabilists' Hermite weights w_i (numpy ``hermegauss``) normalised to
sum to one (they sum to √(2π)),

    ∫Dz f(z) ≈ Σ_i w_i f(z_i),                 Dz = e^(−z²/2) dz / √(2π),
    ∫Dz1 Dz2 f(z1, z2) ≈ Σ_ij w_i w_j f(z_i, z_j)   (tensor grid).

The rule is exact for polynomials of degree < 2n. The node sets are symmetric with an even
count, so no node sits on the kink of ReLU-like functions at 0.

References: Schoenholz et al. 2017, "Deep Information Propagation" (Gaussian integrals by
quadrature); Golub & Welsch 1969 (Gauss quadrature).
"""

from __future__ import annotations

import functools

import numpy as np
from numpy.polynomial.hermite_e import hermegauss

#: Nodes of the 1-D rule (length, χ1 and ξ_q integrals).
N_1D = 160
#: Nodes per axis of the 2-D tensor grid (correlation map and χ_c).
N_2D = 64


@functools.cache
def gauss_hermite(n: int = N_1D) -> tuple[np.ndarray, np.ndarray]:
    """Return (nodes, weights) of the n-point rule for the standard Gaussian measure.

    The weights sum to 1 and both arrays are exactly symmetric about 0.

    Args:
        n: number of nodes (even keeps a node off 0).

    Returns:
        Two read-only float64 arrays of shape (n,).
    """
    z, w = hermegauss(n)
    # Symmetrise away rounding so that odd integrands integrate to exactly 0.
    z = (z - z[::-1]) / 2
    w = (w + w[::-1]) / 2
    w = w / w.sum()
    z.flags.writeable = False
    w.flags.writeable = False
    return z, w


@functools.cache
def gauss_hermite_2d(n: int = N_2D) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return (z1, z2, weights) of the n×n tensor-product rule, flattened.

    Args:
        n: nodes per axis.

    Returns:
        Three read-only float64 arrays of shape (n * n,).
    """
    z, w = gauss_hermite(n)
    z1, z2 = np.meshgrid(z, z, indexing="ij")
    w2 = np.outer(w, w)
    out = (z1.ravel(), z2.ravel(), w2.ravel())
    for a in out:
        a.flags.writeable = False
    return out


def expect(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Return Σ_i w_i values[..., i]: the Gaussian expectation along the last axis."""
    return values @ weights
