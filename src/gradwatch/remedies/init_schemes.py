"""Initialisation schemes: He, Xavier, LeCun, "standard" and orthogonal, one function each.

Every function draws the weights of each nn.Linear, nn.Conv1d/2d/3d and recurrent layer of
a model in place, zeroes their biases, resets norm layers to weight 1 and bias 0, and
returns what it did: layer name → {"scheme", "activation", "gain", "std"}. Recurrent layers
(nn.RNN/LSTM/GRU) are drawn one gate block at a time and keyed by parameter name. Fans come
from ``torch.nn.init._calculate_fan_in_and_fan_out`` (conv: channels × kernel size).

Where a scheme uses a gain, it is the gain of the activation that actually comes after each
layer: in the order a forward pass runs when ``inputs`` is given, otherwise in the order
the modules are registered (see ``_gains.following_activations``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn
from torch.nn.init import _calculate_fan_in_and_fan_out

from gradwatch.errors import GradwatchTypeError, GradwatchValueError
from gradwatch.remedies._apply import InitRecord, apply_init_, draw_orthogonal, fill_
from gradwatch.remedies._targets import check_choice

_DISTRIBUTIONS = ("normal", "uniform")


def he_init_(
    model: nn.Module,
    inputs: Any = None,
    *,
    mode: str = "fan_in",
    distribution: str = "normal",
    layers: Sequence[str] | None = None,
) -> InitRecord:
    """Kaiming/He init: std = gain / √fan, the gain of the activation after each layer.

    For ReLU, ½·n·Var[w] = 1 keeps the variance of the pre-activations constant with depth
    (leaky ReLU: ½(1 + a²)·n·Var[w] = 1). Uniform draws use U[−√3·std, √3·std].

    Args:
        model: the network, changed in place.
        inputs: a batch; when given, the activation after each layer is found by running it.
        mode: "fan_in" (n = inputs per unit, preserves forward variance) or "fan_out"
            (preserves backward variance).
        distribution: "normal" or "uniform".
        layers: only these qualified layer names; None for all.

    Returns:
        Layer name → {"scheme": "he", "activation", "gain", "std"}.

    Raises:
        GradwatchValueError: bad ``mode``/``distribution``, no layer to initialise, or a
            forward pass on ``inputs`` that fails. The model is then unchanged.

    References:
        He, Zhang, Ren, Sun 2015, "Delving Deep into Rectifiers".

    """
    check_choice("mode", mode, ("fan_in", "fan_out"))
    check_choice("distribution", distribution, _DISTRIBUTIONS)

    def draw(w: Tensor, gain: float) -> float:
        fan_in, fan_out = _calculate_fan_in_and_fan_out(w)
        return fill_(w, gain / math.sqrt(fan_in if mode == "fan_in" else fan_out), distribution)

    return apply_init_(model, "he", draw, inputs=inputs, layers=layers)


def xavier_init_(
    model: nn.Module,
    inputs: Any = None,
    *,
    distribution: str = "uniform",
    gain: float | str = 1.0,
    layers: Sequence[str] | None = None,
) -> InitRecord:
    """Xavier/Glorot ("normalized") init: Var[w] = gain² · 2 / (n_in + n_out).

    Uniform: U[−gain·√6/√(n_in + n_out), +gain·√6/√(n_in + n_out)], as in the paper.

    Args:
        model: the network, changed in place.
        inputs: a batch, used with ``gain="activation"`` to find each following activation.
        distribution: "uniform" (the paper) or "normal".
        gain: 1.0 as in the paper, another positive number, or "activation" for the gain of
            the activation after each layer (5/3 for tanh, ...).
        layers: only these qualified layer names; None for all.

    Returns:
        Layer name → {"scheme": "xavier", "activation", "gain", "std"}.

    References:
        Glorot & Bengio 2010, "Understanding the difficulty of training deep feedforward
        neural networks".

    """
    check_choice("distribution", distribution, _DISTRIBUTIONS)
    fixed = _check_gain(gain)

    def draw(w: Tensor, g: float) -> float:
        fan_in, fan_out = _calculate_fan_in_and_fan_out(w)
        return fill_(w, g * math.sqrt(2.0 / (fan_in + fan_out)), distribution)

    return apply_init_(model, "xavier", draw, gain=fixed, inputs=inputs, layers=layers)


def lecun_init_(model: nn.Module, *, layers: Sequence[str] | None = None) -> InitRecord:
    """LeCun normal init: w ~ N(0, 1/n), n = fan-in; the init SELU networks need.

    With it, SELU activations keep mean 0 and variance 1 through depth (self-normalising).

    Args:
        model: the network, changed in place.
        layers: only these qualified layer names; None for all.

    Returns:
        Layer name → {"scheme": "lecun", "gain": 1.0, "std"}.

    References:
        LeCun, Bottou, Orr, Müller 1998, "Efficient BackProp";
        Klambauer et al. 2017, "Self-Normalizing Neural Networks".

    """

    def draw(w: Tensor, gain: float) -> float:
        fan_in, _ = _calculate_fan_in_and_fan_out(w)
        return fill_(w, gain / math.sqrt(fan_in), "normal")

    return apply_init_(model, "lecun", draw, gain=1.0, layers=layers)


def standard_init_(model: nn.Module, *, layers: Sequence[str] | None = None) -> InitRecord:
    """Draw w ~ U[−1/√n, 1/√n], the "standard" heuristic Glorot & Bengio compare against.

    n = fan-in, biases 0, so n·Var[w] = 1/3: in the linear regime the back-propagated
    gradient variance shrinks by 1/3 per layer. Use it to reproduce the classic failure.

    Args:
        model: the network, changed in place.
        layers: only these qualified layer names; None for all.

    Returns:
        Layer name → {"scheme": "standard", "gain": 1.0, "std": 1/√(3n)}.

    References:
        Glorot & Bengio 2010, "Understanding the difficulty of training deep feedforward
        neural networks", eq. (1).

    """

    def draw(w: Tensor, gain: float) -> float:
        fan_in, _ = _calculate_fan_in_and_fan_out(w)
        return fill_(w, gain / math.sqrt(3.0 * fan_in), "uniform")

    return apply_init_(model, "standard", draw, gain=1.0, layers=layers)


def orthogonal_init_(
    model: nn.Module,
    inputs: Any = None,
    *,
    gain: float | str = "activation",
    layers: Sequence[str] | None = None,
) -> InitRecord:
    """Orthogonal init: W = gain · Q, Q from the QR decomposition of a Gaussian matrix.

    The signs of diag(R) are folded into Q so that Q is uniform (Haar) on the orthogonal
    group. Conv kernels are treated as (out, in·k·k) matrices; a tall W has WᵀW = gain²·I,
    a wide one WWᵀ = gain²·I. Recurrent layers get an orthogonal block per gate, both for
    the input and the hidden-to-hidden weights.

    Args:
        model: the network, changed in place.
        inputs: a batch, used with ``gain="activation"`` to find each following activation.
        gain: "activation" for the gain of the activation after each layer, or a number.
        layers: only these qualified layer names; None for all.

    Returns:
        Layer name → {"scheme": "orthogonal", "activation", "gain", "std"}.

    References:
        Saxe, McClelland, Ganguli 2014, "Exact solutions to the nonlinear dynamics of
        learning in deep linear neural networks"; Mezzadri 2007 (sign correction).

    """
    fixed = _check_gain(gain)
    return apply_init_(
        model, "orthogonal", draw_orthogonal, gain=fixed, inputs=inputs, layers=layers
    )


def _check_gain(gain: object) -> float | None:
    """Return None for "activation", the number for a positive number; raise otherwise."""
    if gain == "activation":
        return None
    if isinstance(gain, bool) or not isinstance(gain, (int, float)):
        raise GradwatchTypeError(
            f'gain must be "activation" or a positive number, got {type(gain).__name__}'
        )
    if not 0 < gain < float("inf"):
        raise GradwatchValueError(f'gain must be "activation" or a number > 0, got {gain!r}')
    return float(gain)
