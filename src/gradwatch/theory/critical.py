"""The critical line: σw² at which χ1(σw², σb²) = 1 for a given σb².

Closed forms: piecewise-linear homogeneous φ with slopes a, b (relu, leaky_relu, linear)
have χ1 = σw² (a² + b²)/2 for every q, so σw²_crit = 2/(a² + b²) whatever σb² (ReLU: 2,
He init). Tanh-like φ with σb² = 0 sit at q* = 0 up to criticality, where
χ1 = σw² φ'(0)², so σw²_crit = 1/φ'(0)² (tanh: 1). Otherwise the smallest σw² where χ1
crosses 1 from below: bracketed on a log grid of σw², then brentq.

References: Poole et al. 2016; Schoenholz et al. 2017 ("the critical line", Fig. 1);
He et al. 2015, "Delving Deep into Rectifiers".
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy.optimize import brentq

from gradwatch.theory import _validate, fixed_points
from gradwatch.theory.activations import Activation, resolve_activation

#: The search covers σw² in [1/SEARCH_LIMIT, SEARCH_LIMIT]; no crossing there gives nan.
SEARCH_LIMIT = 1e4
#: Points of the log grid on which the first crossing of χ1 = 1 is bracketed.
GRID_POINTS = 129


def critical_sigma_w2(activation: Any, sigma_b2: Any) -> Any:
    """Return the σw² at which χ1 = 1 (the edge of chaos) for the given σb².

    Args:
        activation: a name (see ``KNOWN_ACTIVATIONS``) or an elementwise callable.
        sigma_b2: σb² = Var(b), >= 0; number or array.

    Returns:
        σw²_crit: a float (nan when χ1 never crosses 1 for σw² in [1e-4, 1e4]), or an array
        of sigma_b2's shape.

    Raises:
        GradwatchValueError: unknown activation, or sigma_b2 out of range.

    References: Schoenholz et al. 2017 (critical line χ1 = 1); He et al. 2015 (ReLU: 2).

    """
    act = resolve_activation(activation)
    _, sb2, shape, scalar = _validate.variances(1.0, sigma_b2)
    out = np.array([_critical_one(act, float(b)) for b in sb2])
    return _validate.output(out, shape, scalar)


def _chi1_at(act: Activation, sw2: float, sb2: float) -> float:
    w, b = np.array([sw2]), np.array([sb2])
    q = fixed_points.q_star(act, w, b)
    return float(fixed_points.chi1(act, w, q)[0])


def _critical_one(act: Activation, sb2: float) -> float:
    if act.homogeneous:
        return 1.0 / fixed_points.mean_sq_homogeneous(act)
    if act.odd_saturating and sb2 == 0:
        d0 = float(act.derivatives(np.zeros(1), order=1)[1][0])
        return 1.0 / (d0 * d0)

    def h(sw2: float) -> float:
        return _chi1_at(act, sw2, sb2) - 1.0

    # χ1 - 1 on a log grid of σw² (one vectorised call), then brentq on the first bracket
    # where it turns from negative to non-negative: the ordered side's edge.
    grid = np.geomspace(1 / SEARCH_LIMIT, SEARCH_LIMIT, GRID_POINTS)
    b = np.full(grid.size, sb2)
    vals = fixed_points.chi1(act, grid, fixed_points.q_star(act, grid, b)) - 1.0
    up = np.flatnonzero((vals[:-1] < 0) & (vals[1:] >= 0))
    if up.size == 0:
        return math.nan
    k = up[0]
    if vals[k + 1] == 0:
        return float(grid[k + 1])
    return brentq(h, grid[k], grid[k + 1], xtol=1e-14, rtol=1e-13)
