"""Mean-field theory of gradient flow: predictions from activation and initialisation.

``q_star``, ``chi1``, ``c_star``, ``depth_scales``, ``critical_sigma_w2``, ``phase``,
``gradient_ratio`` and ``trainable_depth`` take an activation (name or elementwise callable)
and σw², σb² (numbers, or arrays for phase diagrams); ``jacobian_spectrum`` measures a
model's input-output Jacobian; ``predict`` reads a model's layers and predicts whether its
gradients vanish or explode.

References: Poole et al. 2016; Schoenholz et al. 2017, "Deep Information Propagation";
Pennington, Schoenholz & Ganguli 2017.
"""

from gradwatch.theory.activations import (
    KNOWN_ACTIVATIONS,
    Activation,
    activation_from_module,
    resolve_activation,
)
from gradwatch.theory.critical import critical_sigma_w2
from gradwatch.theory.jacobian import JacobianSpectrum, jacobian_spectrum
from gradwatch.theory.meanfield import (
    c_star,
    chi1,
    depth_scales,
    gradient_ratio,
    phase,
    predicted_mean_sq_singular_value,
    q_star,
    trainable_depth,
)
from gradwatch.theory.predict import Prediction, predict
from gradwatch.theory.summary import summary

__all__ = [
    "KNOWN_ACTIVATIONS",
    "Activation",
    "JacobianSpectrum",
    "Prediction",
    "activation_from_module",
    "c_star",
    "chi1",
    "critical_sigma_w2",
    "depth_scales",
    "gradient_ratio",
    "jacobian_spectrum",
    "phase",
    "predict",
    "predicted_mean_sq_singular_value",
    "q_star",
    "resolve_activation",
    "summary",
    "trainable_depth",
]
