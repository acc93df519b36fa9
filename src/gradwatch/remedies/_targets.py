"""What the remedies act on, and how they run a model without leaving a trace.

Shared by every remedy: which module types are initialised, how a batch is fed to a model,
in which order leaf modules execute, and guards that leave a model exactly as it was when a
remedy fails half way (or when it only needed to look at the model).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import nn

from gradwatch.argcheck import check_names
from gradwatch.errors import GradwatchTypeError, GradwatchValueError

#: Layers whose weight the init schemes draw: fans from ``_calculate_fan_in_and_fan_out``.
WEIGHT_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)

#: Recurrent layers: input weights per scheme, hidden-to-hidden weights per scheme or orthogonal.
RECURRENT_TYPES: tuple[type[nn.Module], ...] = (nn.RNNBase,)

#: Normalisation layers, reset to weight 1 and bias 0 by every init scheme.
NORM_TYPES: tuple[type[nn.Module], ...] = (
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.SyncBatchNorm,
    nn.InstanceNorm1d,
    nn.InstanceNorm2d,
    nn.InstanceNorm3d,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.RMSNorm,
)


def check_model(model: object) -> nn.Module:
    """Return ``model`` if it is an ``nn.Module``; raise :class:`GradwatchTypeError` otherwise."""
    if not isinstance(model, nn.Module):
        raise GradwatchTypeError(
            f"model must be a torch.nn.Module, got {type(model).__name__}; "
            "pass the network itself (e.g. an nn.Sequential), not its output or state dict"
        )
    return model


def check_choice(name: str, value: object, choices: Sequence[str]) -> str:
    """Return ``value`` if it is one of ``choices``; raise GradwatchValueError otherwise."""
    if not isinstance(value, str) or value not in choices:
        raise GradwatchValueError(
            f"{name} must be one of {', '.join(repr(c) for c in choices)}, got {value!r}"
        )
    return value


def check_positive(name: str, value: object, *, integer: bool = False) -> float:
    """Return ``value`` if it is a finite positive number; raise a gradwatch error otherwise."""
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds):
        kind = "an int" if integer else "a number"
        raise GradwatchTypeError(f"{name} must be {kind}, got {type(value).__name__}")
    if not value > 0 or value == float("inf"):
        raise GradwatchValueError(f"{name} must be a finite number > 0, got {value!r}")
    return value


def is_weight_layer(module: nn.Module) -> bool:
    """Tell whether ``module`` is a Linear or Conv1d/2d/3d, the layers every scheme draws."""
    return isinstance(module, WEIGHT_TYPES)


def is_norm_layer(module: nn.Module) -> bool:
    """Tell whether ``module`` is a BatchNorm, InstanceNorm, LayerNorm, GroupNorm or RMSNorm."""
    return isinstance(module, NORM_TYPES)


def init_targets(
    model: nn.Module, layers: Sequence[str] | None = None
) -> list[tuple[str, nn.Module]]:
    """Return (name, module) of the weight, recurrent and norm layers, in registration order.

    Args:
        model: the network.
        layers: restrict to these qualified module names; None keeps every layer.

    Raises:
        GradwatchValueError: a name in ``layers`` is not such a layer, the model has no layer
            to initialise, or a lazy layer has not been materialised yet.

    """
    found = [
        (name or "(root)", m)
        for name, m in model.named_modules()
        if isinstance(m, WEIGHT_TYPES + RECURRENT_TYPES + NORM_TYPES)
    ]
    if layers is not None:
        layers = check_names("layers", layers, hint="give qualified module names, e.g. ['0']")
        known = {name for name, _ in found}
        unknown = [name for name in layers if name not in known]
        if unknown:
            raise GradwatchValueError(
                f"layers names {unknown} that are not Linear, Conv, recurrent or norm layers "
                f"of the model; known: {sorted(known)}"
            )
        found = [(name, m) for name, m in found if name in set(layers)]
    if not any(isinstance(m, WEIGHT_TYPES + RECURRENT_TYPES) for _, m in found):
        raise GradwatchValueError(
            f"model ({type(model).__name__}) has no nn.Linear, nn.Conv1d/2d/3d or recurrent "
            "layer to initialise; pass the network that holds them"
        )
    for name, m in found:
        if any(isinstance(p, nn.parameter.UninitializedParameter) for p in m.parameters()):
            raise GradwatchValueError(
                f"model layer {name!r} is lazy and not materialised yet; run one forward pass "
                "before initialising it"
            )
    return found


def run_forward(model: nn.Module, inputs: Any) -> Any:
    """Call ``model`` on ``inputs``: a tensor, a tuple/list of positional args, or a dict."""
    if isinstance(inputs, torch.Tensor):
        return model(inputs)
    if isinstance(inputs, (tuple, list)):
        return model(*inputs)
    if isinstance(inputs, dict):
        return model(**inputs)
    raise GradwatchTypeError(
        f"inputs must be a tensor, a tuple/list of positional arguments or a dict of keyword "
        f"arguments for model(...), got {type(inputs).__name__}"
    )


def execution_order(model: nn.Module, inputs: Any) -> list[tuple[str, nn.Module]]:
    """Return the leaf modules in the order a forward pass on ``inputs`` runs them.

    Leaves are modules without children (recurrent layers included). A module that runs
    several times appears at each call. Runs under ``no_grad`` and restores every buffer, so
    the model is left as it was.
    """
    order: list[tuple[str, nn.Module]] = []
    handles = []
    for name, m in model.named_modules():
        if next(m.children(), None) is None:
            label = name or "(root)"
            handles.append(
                m.register_forward_hook(lambda mod, i, o, label=label: order.append((label, mod)))
            )
    try:
        with torch.no_grad(), preserved_buffers(model):
            try:
                run_forward(model, inputs)
            except GradwatchTypeError:
                raise
            except Exception as err:
                raise GradwatchValueError(
                    f"inputs: the forward pass model(inputs) failed ({type(err).__name__}: "
                    f"{err}); pass a batch the model accepts"
                ) from err
    finally:
        for h in handles:
            h.remove()
    return order


@contextlib.contextmanager
def preserved_buffers(model: nn.Module) -> Iterator[None]:
    """Restore every buffer (BatchNorm running statistics, ...) on exit."""
    saved = [(b, b.detach().clone()) for b in model.buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for b, copy in saved:
                b.copy_(copy)


@contextlib.contextmanager
def restore_on_error(model: nn.Module) -> Iterator[None]:
    """Put back every parameter and buffer if the block raises: a failed remedy changes nothing."""
    saved = {k: v.detach().clone() for k, v in model.state_dict().items()}
    try:
        yield
    except BaseException:
        with torch.no_grad():
            for k, v in model.state_dict().items():
                v.copy_(saved[k])
        raise
