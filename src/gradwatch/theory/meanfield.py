"""Mean-field signal propagation: q*, χ1, c*, depth scales, phase, trainable depth.

A wide fully connected network with W ~ N(0, σw²/N) and b ~ N(0, σb²) carries a forward
signal of variance q* and back-propagates gradients whose squared norm changes by

    χ1 = σw² ∫Dz φ'(√q* z)²

per layer: ordered phase χ1 < 1 (gradients vanish), chaotic χ1 > 1 (they explode),
critical χ1 = 1. Depth scales:

    ξ_q = −1 / ln[χ1 + σw² ∫Dz φ''(√q* z) φ(√q* z)]     (the length settles)
    ξ_c = −1 / ln χ_c,  χ_c = σw² ∫Dz1 Dz2 φ'(u1) φ'(u2) at c*   (χ_c = χ1 when c* = 1)
    1/ξ_∇ = −ln χ1                                       (negative ξ_∇: exploding)

Networks train roughly when depth L ≲ 6 ξ_c.

Every function takes ``sigma_w2`` and ``sigma_b2`` as numbers or arrays that broadcast
together (for phase diagrams): numbers in give Python floats (or str) out, arrays in give
arrays of the broadcast shape out.

References: Poole et al. 2016, "Exponential expressivity in deep neural networks through
transient chaos"; Schoenholz et al. 2017, "Deep Information Propagation".
"""

from __future__ import annotations

from typing import Any

import numpy as np

from gradwatch.errors import GradwatchValueError
from gradwatch.theory import _validate, fixed_points
from gradwatch.theory.activations import Activation, resolve_activation

#: Default tolerance on |χ1 − 1| for calling a point "critical".
CRITICAL_TOL = 1e-2
#: Trainable depth in units of ξ_c (Schoenholz et al. 2017, Fig. 6).
TRAINABLE_XI_C = 6.0


def _setup(activation: Any, sigma_w2: Any, sigma_b2: Any):
    act = resolve_activation(activation)
    sw2, sb2, shape, scalar = _validate.variances(sigma_w2, sigma_b2)
    return act, sw2, sb2, shape, scalar


def _q_chi(act: Activation, sw2: np.ndarray, sb2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    q = fixed_points.q_star(act, sw2, sb2)
    return q, fixed_points.chi1(act, sw2, q)


#: |x − 1| below this counts as exactly critical: −1/ln x = inf (not ~1e15 from rounding).
_CRITICAL_ROUNDING = 1e-12


def _neg_inv_log(x: np.ndarray) -> np.ndarray:
    """Return −1/ln x, with inf within rounding of x = 1 and 0 at x = 0."""
    x = np.asarray(x, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = -1.0 / np.log(x)
    out = np.where(np.abs(x - 1.0) <= _CRITICAL_ROUNDING, np.inf, out)
    return np.where(x <= 0.0, 0.0, out)


def q_star(activation: Any, sigma_w2: Any, sigma_b2: Any) -> Any:
    """Return the fixed point q* of the length map q^l = σw² ∫Dz φ(√q^{l−1} z)² + σb².

    The map is iterated from q = 1 (then finished with brentq where it converges slowly).
    Closed forms: ReLU q* = σb² / (1 − σw²/2) for σw² < 2; tanh-like with σb² = 0 and
    σw² φ'(0)² <= 1: q* = 0. When the length grows without bound q* = inf (ReLU with
    σw² >= 2; at exactly (2, 0) every q is a fixed point and inf is returned too).

    Args:
        activation: a name (see ``KNOWN_ACTIVATIONS``) or an elementwise callable.
        sigma_w2: σw² = fan_in · Var(W), > 0; number or array.
        sigma_b2: σb² = Var(b), >= 0; number or array.

    Returns:
        q*: a float, or an array of the broadcast shape.

    Raises:
        GradwatchValueError: unknown activation, or variances out of range.

    References: Poole et al. 2016; Schoenholz et al. 2017 (Eq. 3).

    """
    act, sw2, sb2, shape, scalar = _setup(activation, sigma_w2, sigma_b2)
    return _validate.output(fixed_points.q_star(act, sw2, sb2), shape, scalar)


def chi1(activation: Any, sigma_w2: Any, sigma_b2: Any) -> Any:
    """Return χ1 = σw² ∫Dz φ'(√q* z)²: the per-layer factor of ‖backprop‖².

    ReLU: χ1 = σw²/2 for every q; linear: χ1 = σw². Where q* = inf, the limit q → inf.

    Args:
        activation: a name or an elementwise callable.
        sigma_w2: σw², > 0; number or array.
        sigma_b2: σb², >= 0; number or array.

    Returns:
        χ1: a float, or an array of the broadcast shape.

    Raises:
        GradwatchValueError: unknown activation, or variances out of range.

    References: Schoenholz et al. 2017, Eq. 5; Poole et al. 2016.

    """
    act, sw2, sb2, shape, scalar = _setup(activation, sigma_w2, sigma_b2)
    return _validate.output(_q_chi(act, sw2, sb2)[1], shape, scalar)


def c_star(activation: Any, sigma_w2: Any, sigma_b2: Any) -> Any:
    """Return c*, the fixed point of the correlation map of two inputs.

    c^l = [σw² ∫Dz1 Dz2 φ(u1) φ(u2) + σb²] / q*, u1 = √q* z1, u2 = √q* (c z1 + √(1−c²) z2).
    Ordered phase (χ1 <= 1): c* = 1. Chaotic: c* < 1, found by iterating from c = 0.5.
    Chaotic with q* = inf: c* = 1 (the map is marginal at 1, e.g. ReLU with σw² > 2).

    Args:
        activation: a name or an elementwise callable.
        sigma_w2: σw², > 0; number or array.
        sigma_b2: σb², >= 0; number or array.

    Returns:
        c*: a float in [−1, 1], or an array of the broadcast shape.

    Raises:
        GradwatchValueError: unknown activation, or variances out of range.

    References: Schoenholz et al. 2017, Eq. 4; Poole et al. 2016.

    """
    act, sw2, sb2, shape, scalar = _setup(activation, sigma_w2, sigma_b2)
    q, chi = _q_chi(act, sw2, sb2)
    c, _ = fixed_points.c_star(act, sw2, sb2, q, chi)
    return _validate.output(c, shape, scalar)


def depth_scales(activation: Any, sigma_w2: Any, sigma_b2: Any) -> tuple[Any, Any, Any]:
    """Return (ξ_q, ξ_c, ξ_∇): the depths over which length, correlation and gradient change.

    ξ_q = −1/ln[χ1 + σw² ∫Dz φ''(√q* z) φ(√q* z)]  (inf when q* = inf),
    ξ_c = −1/ln χ_c with χ_c = σw² ∫Dz1 Dz2 φ'(u1) φ'(u2) at c* (χ_c = χ1 when c* = 1),
    ξ_∇ = −1/ln χ1, negative when gradients explode, inf at criticality.

    Args:
        activation: a name or an elementwise callable.
        sigma_w2: σw², > 0; number or array.
        sigma_b2: σb², >= 0; number or array.

    Returns:
        (xi_q, xi_c, xi_grad): floats, or arrays of the broadcast shape.

    Raises:
        GradwatchValueError: unknown activation, or variances out of range.

    References: Schoenholz et al. 2017, Eqs. 7, 9 and 17.

    """
    act, sw2, sb2, shape, scalar = _setup(activation, sigma_w2, sigma_b2)
    q, chi = _q_chi(act, sw2, sb2)
    _, chi_c = fixed_points.c_star(act, sw2, sb2, q, chi)
    # A length slope >= 1 means the length never settles (q* = inf): ξ_q = inf.
    xi_q = _neg_inv_log(np.minimum(fixed_points.length_slope(act, sw2, q), 1.0))
    xi_c = _neg_inv_log(np.minimum(chi_c, 1.0))
    xi_grad = _neg_inv_log(chi)
    return tuple(_validate.output(x, shape, scalar) for x in (xi_q, xi_c, xi_grad))


def gradient_ratio(activation: Any, sigma_w2: Any, sigma_b2: Any, depth: int) -> Any:
    """Return the predicted ‖δ_0‖² / ‖δ_L‖² = χ1^depth over ``depth`` layers.

    Below 1 the gradient vanishes toward the input, above 1 it explodes.

    Args:
        activation: a name or an elementwise callable.
        sigma_w2: σw², > 0; number or array.
        sigma_b2: σb², >= 0; number or array.
        depth: the number of layers, a positive int.

    Returns:
        χ1^depth: a float, or an array of the broadcast shape.

    Raises:
        GradwatchValueError: unknown activation, variances out of range, depth < 1.
        GradwatchTypeError: depth not an int.

    References: Schoenholz et al. 2017, Eq. 17.

    """
    depth = _validate.depth(depth)
    act, sw2, sb2, shape, scalar = _setup(activation, sigma_w2, sigma_b2)
    chi = _q_chi(act, sw2, sb2)[1]
    with np.errstate(over="ignore", under="ignore"):
        return _validate.output(chi**depth, shape, scalar)


def trainable_depth(activation: Any, sigma_w2: Any, sigma_b2: Any) -> Any:
    """Return the depth up to which such a network trains, about 6 ξ_c.

    Args:
        activation: a name or an elementwise callable.
        sigma_w2: σw², > 0; number or array.
        sigma_b2: σb², >= 0; number or array.

    Returns:
        6 ξ_c (inf at criticality): a float, or an array of the broadcast shape.

    Raises:
        GradwatchValueError: unknown activation, or variances out of range.

    References: Schoenholz et al. 2017, Sec. 5 and Fig. 6 (trainable iff L ≲ 6 ξ_c).

    """
    xi_c = depth_scales(activation, sigma_w2, sigma_b2)[1]
    return TRAINABLE_XI_C * xi_c


def phase_of(chi: Any, tol: float = CRITICAL_TOL) -> Any:
    """Return "ordered", "chaotic" or "critical" for χ1 values (critical: |χ1 − 1| <= tol)."""
    chi = np.asarray(chi, dtype=np.float64)
    out = np.where(chi < 1, "ordered", "chaotic").astype("<U8")
    out[np.abs(chi - 1) <= tol] = "critical"
    return out.item() if out.ndim == 0 else out


def phase(activation: Any, sigma_w2: Any, sigma_b2: Any, tol: float = CRITICAL_TOL) -> Any:
    """Return "ordered" (χ1 < 1), "chaotic" (χ1 > 1) or "critical" (|χ1 − 1| <= tol).

    Args:
        activation: a name or an elementwise callable.
        sigma_w2: σw², > 0; number or array.
        sigma_b2: σb², >= 0; number or array.
        tol: the half-width of the critical band around χ1 = 1, >= 0.

    Returns:
        A str, or an array of str of the broadcast shape.

    Raises:
        GradwatchValueError: unknown activation, variances out of range, bad tol.

    References: Poole et al. 2016; Schoenholz et al. 2017.

    """
    if not (isinstance(tol, int | float) and np.isfinite(tol) and tol >= 0):
        raise GradwatchValueError(
            f"tol must be a finite number >= 0, got {tol!r}; it is the allowed |chi1 - 1| "
            "for 'critical', e.g. tol=0.01"
        )
    act, sw2, sb2, shape, scalar = _setup(activation, sigma_w2, sigma_b2)
    chi = _q_chi(act, sw2, sb2)[1].reshape(shape)
    out = phase_of(chi, tol)
    return str(out) if scalar else out


def predicted_mean_sq_singular_value(
    activation: Any, sigma_w2: Any, sigma_b2: Any, depth: int
) -> Any:
    """Return the mean squared singular value of the input-output Jacobian, χ1^depth.

    For J = ∏ D_l W_l, E[tr(J Jᵀ)]/N = ∏ σw² ∫Dz φ'(√q* z)² = χ1^depth.

    Args:
        activation: a name or an elementwise callable.
        sigma_w2: σw², > 0; number or array.
        sigma_b2: σb², >= 0; number or array.
        depth: the number of layers, a positive int.

    Returns:
        χ1^depth: a float, or an array of the broadcast shape.

    References: Pennington, Schoenholz & Ganguli 2017, "Resurrecting the sigmoid in deep
    learning through dynamical isometry", Eq. 8.

    """
    return gradient_ratio(activation, sigma_w2, sigma_b2, depth)
