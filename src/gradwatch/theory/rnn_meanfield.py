"""Mean-field recursions of a vanilla recurrent network through time (tied weights).

A stack of L Elman layers, ``h^l_t = φ(W^l_ih h^{l−1}_t + W^l_hh h^l_{t−1} + b^l)`` with
``h^{−1}_t = x_t`` and ``h^l_{−1} = 0``, is a deep network whose depth is time and whose
weights are the same at every step. Mean-field theory treats it as a chain of random layers
(Chen, Pennington & Schoenholz 2018, "Dynamical isometry and a mean field theory of RNNs",
§3; the ordered and chaotic phases of Poole et al. 2016 with time as depth):

- forward, per unit, ``q^l_t = σ²_hh,l · m^l_{t−1} + σ²_ih,l · m^{l−1}_t + σ²_b,l`` with
  ``m^l_t = ∫Dz φ(√q^l_t z)²`` (``m^{−1}_t`` the input's mean square, ``m^l_{−1} = 0``);
- backward, with the gradient-independence assumption (the W used going back is drawn
  afresh), the energies ``G^l_t = ‖∂L/∂h^l_t‖²`` obey
  ``G^l_{t−1} += σ²_hh,l · D^l_t`` and ``G^{l−1}_t += ρ_ih,l · D^l_t``, with
  ``D^l_t = ∫Dz φ'(√q^l_t z)² · G^l_t = ‖∂L/∂a^l_t‖²`` and ``G`` seeded by the read-out at
  each step of the top layer (and at the final states);
- the gradient at a layer's input sequence, which ``gw.check`` measures, is
  ``X^l_t = ‖∂L/∂x^l_t‖² = ρ_ih,l · D^l_t``.

σ² is a weight matrix's mean square times its fan-in, ρ its squared Frobenius norm over its
output size (the same number for a square matrix; ``E‖Wᵀδ‖² = ρ‖δ‖²``). The per-step factor
of the gradient, ``χ^l_t = σ²_hh,l ∫Dz φ'(√q^l_t z)²``, tends to ``χ* = σ²_hh ∫Dz φ'(√q* z)²``
at the forward fixed point q*: below 1 the gradient through time vanishes geometrically
(ordered phase), above 1 it grows (chaotic phase).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from gradwatch.theory import fixed_points
from gradwatch.theory.activations import Activation


@dataclass(frozen=True)
class ElmanLayer:
    """One layer's numbers: its activation, σ²_hh, σ²_ih (forward), ρ_ih (backward), σ²_b."""

    act: Activation
    sigma_hh2: float
    sigma_ih2: float
    rho_ih: float
    sigma_b2: float


def moments(act: Activation, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(∫Dz φ(√q z)², ∫Dz φ'(√q z)²) for an array of q >= 0 (exact for homogeneous φ)."""
    q = np.asarray(q, dtype=np.float64)
    if act.homogeneous:
        m2 = fixed_points.mean_sq_homogeneous(act)
        return m2 * q, np.full_like(q, m2)
    q_eval = np.clip(q, fixed_points.Q_EVAL_MIN, fixed_points.Q_BIG)
    phi2, dphi2 = fixed_points.gaussian_moments(act, q_eval, order=1)
    return np.asarray(phi2, dtype=np.float64), np.asarray(dphi2, dtype=np.float64)


def forward(layers: list[ElmanLayer], q_in: np.ndarray, m0: np.ndarray | None = None):
    """q^l_t and m^l_t (arrays of shape (L, T)) from the input's mean square per step.

    ``m0``: the mean square of each layer's initial state (zeros by default).
    """
    q_in = np.asarray(q_in, dtype=np.float64)
    n_layers, steps = len(layers), len(q_in)
    q = np.zeros((n_layers, steps))
    m = np.zeros((n_layers, steps))
    below = q_in
    for k, ly in enumerate(layers):
        prev = 0.0 if m0 is None else float(m0[k])
        for t in range(steps):
            q[k, t] = ly.sigma_hh2 * prev + ly.sigma_ih2 * below[t] + ly.sigma_b2
            m[k, t] = moments(ly.act, q[k, t : t + 1])[0][0]
            prev = m[k, t]
        below = m[k]
    return q, m


def backward(
    layers: list[ElmanLayer],
    q: np.ndarray,
    inject: np.ndarray,
    inject_final: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The gradient energies going back through time and layers.

    Args:
        layers: the stack, input side first.
        q: q^l_t from :func:`forward`.
        inject: ‖∂L/∂(top layer's output at t)‖² over t, as the read-out puts it there.
        inject_final: ‖∂L/∂h^l_{T−1}‖² the read-out puts on each layer's final state.

    Returns:
        (X, chi): X^l_t = ‖∂L/∂x^l_t‖² at each layer's input, and the per-step factor
        χ^l_t = σ²_hh,l ∫Dz φ'(√q^l_t z)², both of shape (L, T).
    """
    n_layers, steps = q.shape
    x_energy = np.zeros((n_layers, steps))
    chi = np.zeros((n_layers, steps))
    dphi2 = np.stack([moments(ly.act, q[k])[1] for k, ly in enumerate(layers)])
    from_above = np.asarray(inject, dtype=np.float64)
    for k in range(n_layers - 1, -1, -1):
        ly = layers[k]
        chi[k] = ly.sigma_hh2 * dphi2[k]
        carry = 0.0 if inject_final is None else float(inject_final[k])
        for t in range(steps - 1, -1, -1):
            g = from_above[t] + carry
            d = dphi2[k, t] * g
            x_energy[k, t] = ly.rho_ih * d
            carry = ly.sigma_hh2 * d
        from_above = x_energy[k]
    return x_energy, chi


def fixed_point(ly: ElmanLayer, q_in: float) -> tuple[float, float]:
    """(q*, χ*) of one layer driven by an input of constant mean square ``q_in``."""
    sb2 = ly.sigma_ih2 * q_in + ly.sigma_b2
    q = float(fixed_points.q_star(ly.act, np.array([ly.sigma_hh2]), np.array([sb2]))[0])
    if not math.isfinite(q):
        return math.inf, math.inf
    return q, ly.sigma_hh2 * float(moments(ly.act, np.array([q]))[1][0])
