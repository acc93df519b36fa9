"""Layer-sequential unit-variance (LSUV) init: orthonormal, then rescale layer by layer."""

from __future__ import annotations

import math
import warnings
from typing import Any

import torch
from torch import nn

from gradwatch.errors import GradwatchValueError
from gradwatch.remedies._apply import InitRecord
from gradwatch.remedies._targets import (
    check_model,
    check_positive,
    execution_order,
    is_weight_layer,
    preserved_buffers,
    restore_on_error,
    run_forward,
)
from gradwatch.remedies.init_schemes import orthogonal_init_


class _Captured(Exception):
    """Raised by the capture hook to stop the forward pass once the layer has run."""


def lsuv_init_(
    model: nn.Module, inputs: Any = None, tol: float = 0.1, max_iter: int = 10
) -> InitRecord:
    """LSUV init: orthonormal weights, then unit output variance for each layer in turn.

    After an orthonormal init (gain 1), for each Linear/Conv layer in the order the forward
    pass runs them: forward the batch, measure v = Var(layer output) over every element, and
    while |v − 1| ≥ tol (at most ``max_iter`` times) set W ← W / √v. Biases are zero, so one
    rescaling is exact unless the layer's input depends on itself. Earlier layers are final
    by the time a layer is scaled, so every layer ends with its output variance on this batch
    within ``tol`` of 1. Recurrent layers keep their orthogonal weights (a tanh state cannot
    reach unit variance). Buffers (BatchNorm running statistics) are left as they were.

    Args:
        model: the network, changed in place.
        inputs: a representative batch for ``model(inputs)`` (tensor, tuple or dict).
        tol: tolerance on |Var − 1|, 0.1 in the paper.
        max_iter: most rescalings per layer, 10 in the paper.

    Returns:
        Layer name → {"scheme": "lsuv", "variance" (final), "iterations", "converged",
        "std"}; recurrent weights keep their "orthogonal" record.

    Raises:
        GradwatchValueError: ``inputs`` is None, a forward pass fails, or a layer's output
            has zero or non-finite variance on the batch. The model is then unchanged.

    References:
        Mishkin & Matas 2016, "All you need is a good init".

    """
    check_model(model)
    if inputs is None:
        raise GradwatchValueError(
            "inputs is required by LSUV: it scales each layer to unit output variance on a "
            "batch; pass one representative batch, e.g. lsuv_init_(model, next(iter(loader))[0])"
        )
    check_positive("tol", tol)
    check_positive("max_iter", max_iter, integer=True)
    with restore_on_error(model), preserved_buffers(model):
        records = orthogonal_init_(model, gain=1.0)
        seen: set[str] = set()
        for name, layer in execution_order(model, inputs):
            if not is_weight_layer(layer) or name in seen:
                continue
            seen.add(name)
            records[name] = _scale_to_unit_variance_(model, inputs, name, layer, tol, max_iter)
    stuck = [name for name, r in records.items() if r.get("converged") is False]
    if stuck:
        warnings.warn(
            f"LSUV: layers {stuck} did not reach |Var - 1| < {tol} in {max_iter} iterations",
            stacklevel=2,
        )
    return records


def _scale_to_unit_variance_(
    model: nn.Module, inputs: Any, name: str, layer: nn.Module, tol: float, max_iter: int
) -> dict[str, Any]:
    iterations = 0
    while True:
        var = _output_variance(model, inputs, layer)
        if not math.isfinite(var) or var <= 0.0:
            raise GradwatchValueError(
                f"inputs: layer {name!r} has output variance {var} on this batch, so LSUV "
                "cannot scale it to 1; pass a batch of real, varied data (more than one sample)"
            )
        converged = abs(var - 1.0) < tol
        if converged or iterations == max_iter:
            break
        with torch.no_grad():
            layer.weight.mul_(1.0 / math.sqrt(var))
        iterations += 1
    std = layer.weight.detach().double().pow(2).mean().sqrt().item()  # RMS of the entries
    return {
        "scheme": "lsuv",
        "variance": var,
        "iterations": iterations,
        "converged": converged,
        "std": std,
    }


def _output_variance(model: nn.Module, inputs: Any, layer: nn.Module) -> float:
    """Var of ``layer``'s output on ``inputs``; the forward pass stops right after the layer."""
    captured: list[torch.Tensor] = []

    def capture(module: nn.Module, args: Any, output: torch.Tensor) -> None:
        captured.append(output.detach())
        raise _Captured

    handle = layer.register_forward_hook(capture)
    try:
        with torch.no_grad():
            run_forward(model, inputs)
    except _Captured:
        pass
    finally:
        handle.remove()
    return captured[0].double().var().item()
