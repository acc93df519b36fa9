"""Every mean-field number for one (activation, σw², σb²), as a plain dict."""

from __future__ import annotations

from typing import Any

from gradwatch.errors import GradwatchValueError
from gradwatch.theory import _validate
from gradwatch.theory.activations import resolve_activation
from gradwatch.theory.critical import critical_sigma_w2
from gradwatch.theory.meanfield import (
    TRAINABLE_XI_C,
    c_star,
    chi1,
    depth_scales,
    phase,
    q_star,
)


def summary(activation: Any, sigma_w2: float, sigma_b2: float, depth: int | None = None) -> dict:
    """Return q*, χ1, c*, the depth scales, phase, critical σw² and trainable depth.

    Args:
        activation: a name (see ``KNOWN_ACTIVATIONS``) or an elementwise callable.
        sigma_w2: σw² = fan_in · Var(W), a number > 0.
        sigma_b2: σb² = Var(b), a number >= 0.
        depth: optional number of layers; adds ``gradient_ratio`` = χ1^depth (the predicted
            ‖δ_0‖²/‖δ_L‖², also the mean squared Jacobian singular value) and ``trainable``
            (depth <= 6 ξ_c).

    Returns:
        A dict of Python floats and strings (inf where a scale diverges).

    Raises:
        GradwatchValueError: unknown activation, variances out of range or not numbers,
            depth not a positive int.

    References: Schoenholz et al. 2017, "Deep Information Propagation"; Pennington et al.
    2017.

    """
    act = resolve_activation(activation)
    _, _, _, scalar = _validate.variances(sigma_w2, sigma_b2)
    if not scalar:
        raise GradwatchValueError(
            "sigma_w2 and sigma_b2 must be single numbers for summary(); use q_star(), "
            "chi1(), ... with arrays for a phase diagram"
        )
    if depth is not None:
        depth = _validate.depth(depth)
    chi = chi1(act, sigma_w2, sigma_b2)
    xi_q, xi_c, xi_grad = depth_scales(act, sigma_w2, sigma_b2)
    out: dict[str, Any] = {
        "activation": act.name,
        "sigma_w2": float(sigma_w2),
        "sigma_b2": float(sigma_b2),
        "q_star": q_star(act, sigma_w2, sigma_b2),
        "chi1": chi,
        "c_star": c_star(act, sigma_w2, sigma_b2),
        "xi_q": xi_q,
        "xi_c": xi_c,
        "xi_grad": xi_grad,
        "phase": phase(act, sigma_w2, sigma_b2),
        "critical_sigma_w2": critical_sigma_w2(act, sigma_b2),
        "trainable_depth": TRAINABLE_XI_C * xi_c,
    }
    if depth is not None:
        out["depth"] = depth
        try:
            out["gradient_ratio"] = chi**depth
        except OverflowError:
            out["gradient_ratio"] = float("inf")
        out["trainable"] = depth <= out["trainable_depth"]
    return out
