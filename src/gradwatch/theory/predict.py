"""Predict a model's gradient flow from its initialisation, by mean-field theory.

Walks the model's modules in order, takes each nn.Linear / nn.Conv{1,2,3}d as a layer and
the first activation module after it as its activation, measures σw² = fan_in · Var(W) and
σb² = Var(b), and propagates the forward length from the input (second moment q0):

    q_l = σw²_l m_{l−1} + σb²_l,   m_l = ∫Dz φ_l(√q_l z)²,   m_0 = q0.

Going back, the squared norm of ∂loss/∂(output of layer l) changes by

    ‖δ_{l−1}‖² / ‖δ_l‖² = σw²_l ∫Dz φ'_{l−1}(√q_{l−1} z)²

(each layer's weights times the derivative of the activation below them). In a uniform
network this is χ1, so the attenuation from the output to layer l is about χ1^(L−l).

References: Poole et al. 2016; Schoenholz et al. 2017, "Deep Information Propagation";
Glorot & Bengio 2010; He et al. 2015, "Delving Deep into Rectifiers".
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from gradwatch.argcheck import check_number
from gradwatch.errors import GradwatchTypeError, GradwatchValueError
from gradwatch.theory import fixed_points
from gradwatch.theory.activations import Activation, activation_from_module, resolve_activation
from gradwatch.theory.meanfield import CRITICAL_TOL, phase_of, trainable_depth

#: Module types that count as layers.
LAYER_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
#: Predicted ‖δ_in‖²/‖δ_out‖² below this is "vanishing", above EXPLODING_ABOVE "exploding".
VANISHING_BELOW = 1e-2
EXPLODING_ABOVE = 1e2


@dataclass(frozen=True)
class Prediction:
    """What mean-field theory predicts for a model at its current weights.

    Attributes:
        table: one row per layer, input side first: layer, type, activation, fan_in,
            sigma_w2, sigma_b2, q (pre-activation variance), chi1 (σw² ∫Dz φ'(√q z)² of
            the layer's own activation), attenuation (predicted ‖δ_layer‖² / ‖δ_last‖²).
        phase: "ordered", "chaotic" or "critical", from the geometric mean per-layer factor.
        gradient_ratio: predicted ‖δ_first‖² / ‖δ_last‖² (the first row's attenuation).
        trainable_depth: 6 ξ_c for the typical hidden layer (median σw², σb²; the most
            common activation).
        verdict: "vanishing", "exploding" or "healthy", from ``gradient_ratio``.
        depth: the number of layers.

    """

    table: pd.DataFrame
    phase: str
    gradient_ratio: float
    trainable_depth: float
    verdict: str
    depth: int

    def summary(self) -> str:
        """Return one plain sentence with the verdict and the numbers behind it."""
        return (
            f"{self.verdict}: {self.depth} layers in the {self.phase} phase; predicted "
            f"input/output ratio of squared back-propagated gradient norms "
            f"{self.gradient_ratio:.3g}; trainable depth about {self.trainable_depth:.3g}"
        )

    def to_dict(self) -> dict[str, Any]:
        """Return the prediction as plain Python objects (the table as a list of rows)."""
        return {
            "phase": self.phase,
            "gradient_ratio": self.gradient_ratio,
            "trainable_depth": self.trainable_depth,
            "verdict": self.verdict,
            "depth": self.depth,
            "layers": self.table.to_dict(orient="records"),
        }


def predict(model: nn.Module, q0: float = 1.0, tol: float = CRITICAL_TOL) -> Prediction:
    """Predict whether ``model``'s gradients vanish or explode, from its weights alone.

    Args:
        model: an nn.Sequential-like model: its modules, in registration order, are the
            layers (nn.Linear, nn.Conv1d/2d/3d) each followed by its activation module
            (none means linear). Activations applied with torch.nn.functional inside
            forward() are not seen; normalization layers are not modelled.
        q0: the second moment of the input coordinates, E[x²] (1 for standardised data).
        tol: half-width of the "critical" band for the per-layer factor.

    Returns:
        A :class:`Prediction`.

    Raises:
        GradwatchTypeError: ``model`` is not an nn.Module.
        GradwatchValueError: ``model`` has no Linear or Conv layer, or q0 is not > 0.

    References: Schoenholz et al. 2017; Poole et al. 2016.

    """
    if not isinstance(model, nn.Module):
        raise GradwatchTypeError(
            f"model must be a torch.nn.Module, got {type(model).__name__}; pass the network "
            "itself (e.g. an nn.Sequential)"
        )
    if not (isinstance(q0, int | float) and not isinstance(q0, bool) and 0 < q0 < math.inf):
        raise GradwatchValueError(
            f"q0 must be a finite number > 0, got {q0!r}; it is the mean square of the input "
            "coordinates, 1.0 for standardised inputs"
        )
    check_number("tol", tol, at_least=0.0, hint="the half-width of the critical band, e.g. 0.01")
    layers = _layers_and_activations(model)
    if not layers:
        raise GradwatchValueError(
            f"model has no nn.Linear or nn.Conv1d/2d/3d layer (it is a {type(model).__name__}); "
            "predict() needs a stack of such layers and activation modules"
        )
    _check_weights(layers)
    rows = []
    dphi2 = []  # ∫Dz φ'(√q z)² per layer: the activation's share of the backward factor
    m_prev = float(q0)
    for name, module, act in layers:
        w = module.weight.detach().to(torch.float64)
        fan_in = w[0].numel()
        sw2 = fan_in * float(w.var(unbiased=False))
        b = module.bias
        sb2 = float(b.detach().to(torch.float64).var(unbiased=False)) if b is not None else 0.0
        q = sw2 * m_prev + sb2
        m_prev, d2 = _moments(act, q)
        dphi2.append(d2)
        rows.append(
            {
                "layer": name,
                "type": type(module).__name__,
                "activation": act.name,
                "fan_in": fan_in,
                "sigma_w2": sw2,
                "sigma_b2": sb2,
                "q": q,
                "chi1": sw2 * d2,
            }
        )
    table = pd.DataFrame(rows)
    # Backward: ‖δ_{l−1}‖² = ‖δ_l‖² · σw²_l · ∫Dz φ'_{l−1}², from the last layer down.
    att = np.ones(len(rows))
    for k in range(len(rows) - 1, 0, -1):
        att[k - 1] = att[k] * rows[k]["sigma_w2"] * dphi2[k - 1]
    table["attenuation"] = att
    ratio = float(att[0])
    depth = len(rows)
    with np.errstate(divide="ignore", over="ignore"):
        per_layer = ratio ** (1.0 / (depth - 1)) if depth > 1 else rows[0]["chi1"]
    if ratio < VANISHING_BELOW:
        verdict = "vanishing"
    elif ratio > EXPLODING_ABOVE:
        verdict = "exploding"
    else:
        verdict = "healthy"
    return Prediction(
        table=table,
        phase=str(phase_of(per_layer, tol)),
        gradient_ratio=ratio,
        trainable_depth=_typical_trainable_depth(layers, table),
        verdict=verdict,
        depth=depth,
    )


def _check_weights(layers: list[tuple[str, nn.Module, Activation]]) -> None:
    """Each layer's weight must be materialised, non-empty and finite."""
    for name, module, _ in layers:
        w = module.weight
        label = f"model layer {name or '(the model itself)'!r} ({type(module).__name__})"
        if isinstance(w, nn.parameter.UninitializedParameter):
            raise GradwatchValueError(
                f"{label} has uninitialised (lazy) weights; run one forward pass first"
            )
        if w.numel() == 0:
            raise GradwatchValueError(
                f"{label} has no weights (shape {tuple(w.shape)}); every layer needs at least "
                "one input and one output"
            )
        if not bool(torch.isfinite(w).all()):
            raise GradwatchValueError(
                f"{label} has non-finite weights (NaN or Inf), so no prediction holds; "
                "re-initialise it, e.g. gw.remedies.init_(model, 'he')"
            )


def _layers_and_activations(model: nn.Module) -> list[tuple[str, nn.Module, Activation]]:
    found: list[list[Any]] = []
    for name, module in model.named_modules():
        if isinstance(module, LAYER_TYPES):
            found.append([name, module, None])
        elif found and found[-1][2] is None:
            act = activation_from_module(module)
            if act is not None:
                found[-1][2] = act
    linear = resolve_activation("linear")
    return [(name, module, act or linear) for name, module, act in found]


def _moments(act: Activation, q: float) -> tuple[float, float]:
    """Return (∫Dz φ(√q z)², ∫Dz φ'(√q z)²), exactly for homogeneous φ."""
    if act.homogeneous:
        m2 = fixed_points.mean_sq_homogeneous(act)
        return m2 * q, m2
    q_eval = np.array([min(max(q, fixed_points.Q_EVAL_MIN), fixed_points.Q_BIG)])
    phi2, dphi2 = fixed_points.gaussian_moments(act, q_eval, order=1)
    return float(phi2[0]), float(dphi2[0])


def _typical_trainable_depth(layers: list, table: pd.DataFrame) -> float:
    """6 ξ_c at the hidden layers' median σw², σb² and most common activation."""
    hidden = table.iloc[:-1] if len(table) > 1 else table
    common = Counter(hidden["activation"]).most_common(1)[0][0]
    act = next(a for (_, _, a) in layers if a.name == common)
    sel = hidden[hidden["activation"] == common]
    sw2 = float(sel["sigma_w2"].median())
    sb2 = float(sel["sigma_b2"].median())
    if not sw2 > 0:
        return 0.0
    return float(trainable_depth(act, sw2, sb2))
