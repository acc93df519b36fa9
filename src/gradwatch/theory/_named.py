"""Closed-form φ, φ', φ'' of the named activations, in numpy.

Each function takes an array x and the highest derivative wanted (0, 1 or 2) and returns
[φ(x), φ'(x), φ''(x)][: order + 1]. At kinks the one-sided value PyTorch's autograd uses is
taken (relu'(0) = 0, elu'(0) = 1). Plain numpy keeps the thousands of quadrature
evaluations free of torch's per-call and thread-pool overheads.

References: the activations' papers — Glorot et al. 2011 (ReLU), Maas et al. 2013 (leaky
ReLU), Clevert et al. 2016 (ELU), Klambauer et al. 2017 (SELU), Hendrycks & Gimpel 2016
(GELU), Ramachandran et al. 2017 (swish).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
from scipy import special

Derivs = Callable[[np.ndarray, int], list[np.ndarray]]

#: SELU's constants, as in torch.nn.functional.selu.
SELU_ALPHA = 1.6732632423543772848170429916717
SELU_SCALE = 1.0507009873554804934193349852946
_INV_SQRT_2PI = 1 / math.sqrt(2 * math.pi)
_TWO_OVER_SQRT_PI = 2 / math.sqrt(math.pi)


def _tanh(x: np.ndarray, order: int) -> list[np.ndarray]:
    t = np.tanh(x)
    d1 = 1 - t * t
    return [t, d1, -2 * t * d1][: order + 1]


def _sigmoid(x: np.ndarray, order: int) -> list[np.ndarray]:
    s = special.expit(x)
    d1 = s * (1 - s)
    return [s, d1, d1 * (1 - 2 * s)][: order + 1]


def _swish(x: np.ndarray, order: int) -> list[np.ndarray]:
    s = special.expit(x)
    return [x * s, s * (1 + x * (1 - s)), s * (1 - s) * (2 + x * (1 - 2 * s))][: order + 1]


def _gelu(x: np.ndarray, order: int) -> list[np.ndarray]:
    cdf = special.ndtr(x)
    pdf = np.exp(-x * x / 2) * _INV_SQRT_2PI
    return [x * cdf, cdf + x * pdf, pdf * (2 - x * x)][: order + 1]


def _erf(x: np.ndarray, order: int) -> list[np.ndarray]:
    d1 = _TWO_OVER_SQRT_PI * np.exp(-x * x)
    return [special.erf(x), d1, -2 * x * d1][: order + 1]


def _softsign(x: np.ndarray, order: int) -> list[np.ndarray]:
    a = 1 + np.abs(x)
    return [x / a, 1 / (a * a), -2 * np.sign(x) / (a * a * a)][: order + 1]


def _hard_tanh(x: np.ndarray, order: int) -> list[np.ndarray]:
    inside = (x > -1) & (x < 1)
    return [np.clip(x, -1.0, 1.0), inside.astype(np.float64), np.zeros_like(x)][: order + 1]


def _elu_like(alpha: float, scale: float) -> Derivs:
    def derivs(x: np.ndarray, order: int) -> list[np.ndarray]:
        pos = x > 0
        e = np.exp(np.minimum(x, 0.0))
        phi = scale * np.where(pos, x, alpha * np.expm1(np.minimum(x, 0.0)))
        d1 = scale * np.where(pos, 1.0, alpha * e)
        d2 = scale * np.where(x < 0, alpha * e, 0.0)  # 0 at x = 0, as autograd has it
        return [phi, d1, d2][: order + 1]

    return derivs


def piecewise_linear(slope_neg: float) -> Derivs:
    """Return the derivatives of x ↦ x (x > 0), slope_neg · x (x <= 0)."""

    def derivs(x: np.ndarray, order: int) -> list[np.ndarray]:
        pos = x > 0
        return [
            np.where(pos, x, slope_neg * x),
            np.where(pos, 1.0, slope_neg),
            np.zeros_like(x),
        ][: order + 1]

    return derivs


def _linear(x: np.ndarray, order: int) -> list[np.ndarray]:
    return [x.copy(), np.ones_like(x), np.zeros_like(x)][: order + 1]


#: name -> closed-form derivatives ("leaky_relu" uses slope 0.01, PyTorch's default).
NAMED: dict[str, Derivs] = {
    "tanh": _tanh,
    "relu": piecewise_linear(0.0),
    "leaky_relu": piecewise_linear(0.01),
    "sigmoid": _sigmoid,
    "gelu": _gelu,
    "elu": _elu_like(1.0, 1.0),
    "selu": _elu_like(SELU_ALPHA, SELU_SCALE),
    "softsign": _softsign,
    "linear": _linear,
    "hard_tanh": _hard_tanh,
    "swish": _swish,
    "silu": _swish,
    "erf": _erf,
}
