"""Init for residual networks: Fixup, and zero-init of the residual branches."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn

from gradwatch.errors import GradwatchTypeError, GradwatchValueError
from gradwatch.remedies._apply import InitRecord
from gradwatch.remedies._targets import check_model, is_weight_layer, restore_on_error
from gradwatch.remedies.init_schemes import he_init_
from gradwatch.remedies.residual import Residual, zero_last_layer_


def zero_init_residual_branches_(
    model: nn.Module, branches: Sequence[str] | None = None
) -> InitRecord:
    """Zero the last layer of every residual branch so each block starts as the identity.

    The last Linear/Conv layer of a branch, or its last norm layer's γ (as torchvision's
    ``zero_init_residual`` does), gets weight and bias 0; nothing else changes.

    Args:
        model: the network, changed in place.
        branches: qualified names of the branch modules; None for the ``branch`` of every
            :class:`Residual` (from :func:`add_residual`).

    Returns:
        Name of each zeroed layer → {"scheme": "zero", "std": 0.0}.

    Raises:
        GradwatchValueError: no residual branch found, or a name in ``branches`` unknown.

    References:
        Goyal et al. 2017, "Accurate, Large Minibatch SGD: Training ImageNet in 1 Hour".

    """
    found = _find_branches(check_model(model), branches)
    records: InitRecord = {}
    for name, branch in found:
        last = zero_last_layer_(branch)
        if last is not None:
            records[f"{name}.{last}" if last else name] = {"scheme": "zero", "std": 0.0}
    return records


def fixup_init_(
    model: nn.Module, inputs: Any = None, *, branches: Sequence[str] | None = None
) -> InitRecord:
    """Fixup init: He everywhere, then rescale the residual branches and zero their ends.

    With L residual branches of m Linear/Conv layers each:

    - every layer gets He init (gain of the activation after it),
    - the first m − 1 layers of each branch are scaled by L^(−1/(2m−2)),
    - the last layer of each branch and the classifier (the last Linear/Conv after every
      branch) get weight and bias 0.

    Each block then starts as the identity, and the update of the network function per SGD
    step stays O(η) whatever the depth. The scalar biases and multipliers of the full
    Fixup recipe are not added; the model's structure is left as it is.

    Args:
        model: the network, changed in place.
        inputs: a batch; when given, the activation after each layer is found by running it.
        branches: qualified names of the branch modules; None for the ``branch`` of every
            :class:`Residual` (from :func:`add_residual`).

    Returns:
        Layer name → {"scheme", "activation", "gain", "std"} (and "scale" in branches).

    Raises:
        GradwatchValueError: no residual branch, or a branch without a Linear/Conv layer.
            The model is then unchanged.

    References:
        Zhang, Dauphin, Ma 2019, "Fixup Initialization: Residual Learning Without
        Normalization".

    """
    found = _find_branches(check_model(model), branches)
    names = {id(m): name or "(root)" for name, m in model.named_modules()}
    per_branch = [[m for m in b.modules() if is_weight_layer(m)] for _, b in found]
    empty = [name for (name, _), layers in zip(found, per_branch, strict=True) if not layers]
    if empty:
        raise GradwatchValueError(
            f"branches {empty} hold no Linear/Conv layer, so Fixup has nothing to scale; "
            "name the residual branch modules in branches="
        )
    n_branches = len(found)
    with restore_on_error(model):
        records = he_init_(model, inputs)
        with torch.no_grad():
            for layers in per_branch:
                m = len(layers)
                scale = n_branches ** (-1.0 / (2 * m - 2)) if m > 1 else 1.0
                for layer in layers[:-1]:
                    layer.weight.mul_(scale)
                    rec = records[names[id(layer)]]
                    rec.update(scheme="fixup", scale=scale, std=rec["std"] * scale)
                _zero_(layers[-1])
                records[names[id(layers[-1])]].update(scheme="fixup", scale=0.0, std=0.0)
            classifier = _classifier(model, {id(m) for layers in per_branch for m in layers})
            if classifier is not None:
                _zero_(classifier)
                records[names[id(classifier)]].update(scheme="fixup", scale=0.0, std=0.0)
    return records


def _zero_(layer: nn.Module) -> None:
    for p in layer.parameters(recurse=False):
        p.zero_()


def _classifier(model: nn.Module, in_branches: set[int]) -> nn.Module | None:
    """Return the last Linear/Conv if it is registered after the last branch layer."""
    last = None
    for m in model.modules():
        if id(m) in in_branches:
            last = None  # a layer before a branch is no classifier
        elif is_weight_layer(m):
            last = m
    return last


def _find_branches(model: nn.Module, branches: Sequence[str] | None) -> list[tuple[str, nn.Module]]:
    if branches is None:
        found = [
            (f"{name}.branch" if name else "branch", m.branch)
            for name, m in model.named_modules()
            if isinstance(m, Residual)
        ]
        if not found:
            raise GradwatchValueError(
                f"model ({type(model).__name__}) has no Residual block; make it residual with "
                "add_residual(model), or pass branches=[qualified names of the branch modules]"
            )
        return found
    if (
        isinstance(branches, str)
        or not isinstance(branches, Iterable)
        or not all(isinstance(b, str) for b in branches)
    ):
        raise GradwatchTypeError(f"branches must be a list of module names, got {branches!r}")
    modules = dict(model.named_modules())
    unknown = [b for b in branches if b not in modules]
    if unknown:
        raise GradwatchValueError(
            f"branches names {unknown}, which are not modules of the model; "
            "use the qualified names from model.named_modules()"
        )
    return [(b, modules[b]) for b in branches]
