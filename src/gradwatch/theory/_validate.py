"""Argument checks shared by the theory functions: variances and depths."""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np

from gradwatch.errors import GradwatchTypeError, GradwatchValueError


def _as_array(name: str, value: Any) -> np.ndarray:
    if value is None or isinstance(value, bool | np.bool_ | str | bytes):
        raise GradwatchTypeError(
            f"{name} must be a number or an array of numbers, got {type(value).__name__}; "
            f"pass e.g. {name}=1.5"
        )
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise GradwatchTypeError(
            f"{name} must be a number or an array of numbers, got {type(value).__name__}; "
            f"pass e.g. {name}=1.5"
        ) from exc
    return arr


def variances(sigma_w2: Any, sigma_b2: Any) -> tuple[np.ndarray, np.ndarray, tuple, bool]:
    """Check and broadcast the weight and bias variances.

    Args:
        sigma_w2: σw² (fan-in times the weight variance): finite and > 0, scalar or array.
        sigma_b2: σb² (the bias variance): finite and >= 0, scalar or array.

    Returns:
        (sw2, sb2, shape, scalar): flat float64 arrays of the broadcast shape, the shape,
        and whether both inputs were scalars (then results are Python floats).

    Raises:
        GradwatchTypeError: not numbers.
        GradwatchValueError: out of range, not finite, or shapes that do not broadcast.

    """
    w = _as_array("sigma_w2", sigma_w2)
    b = _as_array("sigma_b2", sigma_b2)
    if not np.all(np.isfinite(w)) or np.any(w <= 0):
        bad = float(w[~(np.isfinite(w) & (w > 0))].ravel()[0])
        raise GradwatchValueError(
            f"sigma_w2 must be finite and > 0, got {bad!r}; it is fan_in * Var(W), e.g. 1.0 "
            "for LeCun init, 2.0 for He init"
        )
    if not np.all(np.isfinite(b)) or np.any(b < 0):
        bad = float(b[~(np.isfinite(b) & (b >= 0))].ravel()[0])
        raise GradwatchValueError(
            f"sigma_b2 must be finite and >= 0, got {bad!r}; it is Var(b), 0.0 for zero biases"
        )
    try:
        w_b, b_b = np.broadcast_arrays(w, b)
    except ValueError as exc:
        raise GradwatchValueError(
            f"sigma_w2 (shape {w.shape}) and sigma_b2 (shape {b.shape}) do not broadcast "
            "together; pass arrays of the same shape, or use np.meshgrid for a phase diagram"
        ) from exc
    shape = w_b.shape
    return w_b.ravel().copy(), b_b.ravel().copy(), shape, w.ndim == 0 and b.ndim == 0


def output(values: np.ndarray, shape: tuple, scalar: bool) -> Any:
    """Return a Python scalar for scalar input, else an array of the broadcast shape."""
    values = np.asarray(values).reshape(shape)
    if scalar:
        return values.item()
    return values


#: Most layers a depth may count: past it χ1^depth is 0 or inf for any χ1 ≠ 1 that a float
#: holds, and the depth itself no longer converts to a float.
MAX_DEPTH = 10**9


def depth(value: Any, name: str = "depth") -> int:
    """Return ``value`` as an int after checking it is a positive integer.

    Raises:
        GradwatchTypeError: not an integer.
        GradwatchValueError: < 1, or more than :data:`MAX_DEPTH`.

    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise GradwatchTypeError(
            f"{name} must be a positive int (a number of layers), got {type(value).__name__} "
            f"{value!r}; pass e.g. {name}=20"
        )
    if value < 1:
        raise GradwatchValueError(
            f"{name} must be a positive int (a number of layers), got {value}; pass e.g. "
            f"{name}=20"
        )
    if value > MAX_DEPTH:
        raise GradwatchValueError(
            f"{name} must be at most {MAX_DEPTH:,} layers, got a number of {len(str(value))} "
            f"digits; pass the network's depth, e.g. {name}=20"
        )
    return int(value)
