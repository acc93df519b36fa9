"""The loop every init scheme shares: validate, find gains, draw each weight, record it.

A scheme supplies one ``draw(weight, gain) -> std`` function that fills a weight tensor in
place (a Linear matrix, a Conv kernel or one gate block of a recurrent matrix) and returns
the standard deviation of the distribution it used. This module does the rest: it checks
the model before touching it, works out the gain of the activation after each layer, zeroes
biases, resets norm layers, splits recurrent weights per gate, and puts everything back if
anything fails.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from gradwatch.remedies._gains import activation_gain, following_activations, recurrent_gain
from gradwatch.remedies._targets import (
    check_model,
    init_targets,
    is_norm_layer,
    is_weight_layer,
    restore_on_error,
)

#: Fills a weight in place given the gain; returns the std of the distribution drawn from.
Draw = Callable[[Tensor, float], float]

#: What an init scheme changed: layer (or recurrent parameter) name → scheme, gain, std, ...
InitRecord = dict[str, dict[str, Any]]


def fill_(weight: Tensor, std: float, distribution: str) -> float:
    """Draw ``weight`` from N(0, std²) or from U[−√3·std, √3·std] (same variance); return std."""
    if distribution == "normal":
        weight.normal_(0.0, std)
    else:
        bound = math.sqrt(3.0) * std
        weight.uniform_(-bound, bound)
    return std


def orthogonal_std(weight: Tensor, gain: float) -> float:
    """Std of the entries of a (gain-scaled) orthogonal matrix of this shape: g/√max(rows, cols)."""
    rows = weight.shape[0]
    cols = weight.numel() // rows
    return gain / math.sqrt(max(rows, cols))


def draw_orthogonal(weight: Tensor, gain: float) -> float:
    """Orthogonal draw (Saxe et al. 2014): Gaussian, QR, sign fix; conv kernels as (out, in·k·k)."""
    nn.init.orthogonal_(weight, gain=gain)
    return orthogonal_std(weight, gain)


def apply_init_(
    model: nn.Module,
    scheme: str,
    draw: Draw,
    *,
    gain: float | None = None,
    inputs: Any = None,
    layers: Sequence[str] | None = None,
) -> InitRecord:
    """Initialise every Linear, Conv and recurrent layer of ``model`` with ``draw``, in place.

    Args:
        model: the network.
        scheme: the name recorded for each layer.
        draw: fills one weight tensor given the gain and returns the std used.
        gain: a fixed gain, or None for the gain of the activation after each layer.
        inputs: a batch; when given, the following activations come from a forward pass.
        layers: restrict to these qualified layer names.

    Returns:
        Layer name → {"scheme", "activation", "gain", "std"}; recurrent weights are keyed by
        their parameter name (``"rnn.weight_hh_l0"``), norm layers get {"scheme": "reset"}.

    """
    check_model(model)
    targets = init_targets(model, layers)
    following = following_activations(model, inputs) if gain is None else {}
    records: InitRecord = {}
    with torch.no_grad(), restore_on_error(model):
        for name, m in targets:
            if is_norm_layer(m):
                for pname, p in m.named_parameters(recurse=False):  # none if not affine
                    p.fill_(1.0 if pname == "weight" else 0.0)
                records[name] = {"scheme": "reset", "weight": 1.0, "bias": 0.0}
            elif is_weight_layer(m):
                g, act = activation_gain(following.get(name)) if gain is None else (gain, None)
                std = draw(m.weight, g)
                if m.bias is not None:
                    m.bias.zero_()
                records[name] = {"scheme": scheme, "activation": act, "gain": g, "std": std}
            else:
                records.update(_init_recurrent_(name, m, scheme, draw, gain))
    return records


def _init_recurrent_(
    name: str,
    module: nn.Module,
    scheme: str,
    draw: Draw,
    gain: float | None,
) -> InitRecord:
    # weight_ih/weight_hh stack the gates along dim 0, (gates·hidden, fan_in): draw each
    # gate's block on its own so fans and orthogonality are per gate, as in a single cell.
    gates = 4 if isinstance(module, nn.LSTM) else 3 if isinstance(module, nn.GRU) else 1
    g, act = recurrent_gain(module) if gain is None else (gain, None)
    records: InitRecord = {}
    for pname, p in module.named_parameters(recurse=False):
        if pname.startswith("bias"):
            p.zero_()
            continue
        blocks = p.chunk(gates, 0) if pname.startswith(("weight_ih", "weight_hh")) else [p]
        stds = [draw(block, g) for block in blocks]
        records[pname if name == "(root)" else f"{name}.{pname}"] = {
            "scheme": scheme,
            "activation": act,
            "gain": g,
            "std": stds[0],
        }
    return records
