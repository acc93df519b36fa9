"""Which activation follows each layer, and the init gain that activation asks for.

A variance-preserving init multiplies its standard deviation by a gain that undoes the
activation's shrinkage: E[φ(z)²] = Var(z)/gain² for z ~ N(0, Var(z)) (exactly for ReLU).

    ReLU family   √2                  (He et al. 2015)
    leaky ReLU    √(2 / (1 + a²))     with the module's own slope a
    tanh          5/3                 (PyTorch's calculate_gain)
    sigmoid       1
    SELU          1                   (LeCun init, Klambauer et al. 2017)
    none/linear   1

References:
    He, Zhang, Ren, Sun 2015, "Delving Deep into Rectifiers".
    Klambauer et al. 2017, "Self-Normalizing Neural Networks".

"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

from torch import nn
from torch.nn.init import calculate_gain

from gradwatch.errors import GradwatchError, GradwatchTypeError
from gradwatch.layers import activation_family
from gradwatch.remedies._targets import (
    RECURRENT_TYPES,
    WEIGHT_TYPES,
    execution_order,
    is_weight_layer,
)


def activation_gain(activation: nn.Module | None) -> tuple[float, str]:
    """Return (gain, name) of the init gain for the activation that follows a layer.

    Args:
        activation: an activation module, or None when no activation follows the layer.

    Returns:
        The gain and a short name of what it was derived from ("relu", "leaky_relu(0.2)",
        "tanh", "sigmoid", "selu", "linear").

    """
    if activation is None:
        return 1.0, "linear"
    if not isinstance(activation, nn.Module):
        raise GradwatchTypeError(
            f"activation must be an activation module (e.g. nn.ReLU()) or None, got "
            f"{type(activation).__name__} {activation!r}"
        )
    if isinstance(activation, nn.SELU):
        return 1.0, "selu"
    if isinstance(activation, nn.LeakyReLU):
        slope = float(activation.negative_slope)
        return calculate_gain("leaky_relu", slope), f"leaky_relu({slope:g})"
    if isinstance(activation, nn.PReLU):
        slope = float(activation.weight.detach().mean())
        return calculate_gain("leaky_relu", slope), f"leaky_relu({slope:g})"
    if isinstance(activation, nn.RReLU):
        slope = (activation.lower + activation.upper) / 2
        return calculate_gain("leaky_relu", slope), f"leaky_relu({slope:g})"
    family = activation_family(activation)
    if family == "rectifier":  # ReLU, ELU, GELU, SiLU, ...: treated as the ReLU they resemble
        return math.sqrt(2.0), "relu"
    if family == "tanh":
        return calculate_gain("tanh"), "tanh"
    if family == "sigmoid":
        return calculate_gain("sigmoid"), "sigmoid"
    return 1.0, "linear"


def recurrent_gain(module: nn.Module) -> tuple[float, str]:
    """Return (gain, name) for a recurrent layer: its own nonlinearity.

    nn.RNN uses its ``nonlinearity`` ("tanh" or "relu"); LSTM and GRU gates are mostly
    sigmoids, so they get gain 1.
    """
    if isinstance(module, nn.RNN):
        return calculate_gain(module.nonlinearity), module.nonlinearity
    return 1.0, "sigmoid"


def following_activations(model: nn.Module, inputs: Any = None) -> dict[str, nn.Module | None]:
    """Map each Linear/Conv layer name to the activation module that comes after it.

    With ``inputs`` the order is the one a forward pass actually runs (forward hooks on
    the leaf modules); without, it is the modules' registration order. The activation of a
    layer is the first activation module after it and before the next Linear/Conv/recurrent
    layer (norm, dropout and pooling layers in between are skipped); None if there is none.
    Activations called as functions inside ``forward`` (``F.relu``) are invisible to both.

    Args:
        model: the network.
        inputs: a batch for ``model(inputs)``, or None for registration order.

    Returns:
        Dict from qualified layer name (``"(root)"`` for the model itself) to module or None.

    """
    if inputs is None:
        sequence = [(name or "(root)", m) for name, m in model.named_modules()]
    else:
        sequence = execution_order(model, inputs)
    following: dict[str, nn.Module | None] = {}
    current: str | None = None
    for name, m in sequence:
        if isinstance(m, WEIGHT_TYPES + RECURRENT_TYPES):
            current = name if is_weight_layer(m) and name not in following else None
            if current is not None:
                following[current] = None
        elif current is not None and activation_family(m) is not None:
            following[current] = m
            current = None
    return following


def dominant_family(model: nn.Module, inputs: Any) -> str:
    """The family of the activation after most Linear/Conv layers ("linear" if none)."""
    try:
        following = following_activations(model, inputs)
    except GradwatchError:
        following = following_activations(model)
    families = Counter(activation_family(a) for a in following.values() if a is not None)
    families.pop("other", None)
    return families.most_common(1)[0][0] if families else "linear"  # type: ignore[return-value]
