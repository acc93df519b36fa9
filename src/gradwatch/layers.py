"""What gradwatch calls a layer, and which modules are activations.

A *layer* is a module that owns parameters directly (``module.parameters(recurse=False)``
is not empty), named by its qualified name from ``named_modules()``. A parametrized module
(``torch.nn.utils.parametrize``: spectral norm, weight norm, orthogonal, ...) is the layer it
is: the tensors its parametrizations hold (``<layer>.parametrizations.weight.original``) are
its own, and the parametrization modules, whose forward computes a weight and not an
activation, are no layers. Activation modules
(nn.ReLU, nn.Tanh, nn.Sigmoid, ...) own no parameters; their statistics are attached to the
layer that ran just before them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils import parametrize

from gradwatch.errors import GradwatchTypeError, GradwatchValueError

#: Activation module types and the family each belongs to. "saturating" activations have
#: flat tails (saturated_frac applies); "rectifier" ones have a flat zero side (dead_frac).
ACTIVATION_FAMILIES: dict[type[nn.Module], str] = {
    nn.Sigmoid: "sigmoid",
    nn.Tanh: "tanh",
    nn.Hardtanh: "tanh",
    nn.Softsign: "tanh",
    nn.Hardsigmoid: "sigmoid",
    nn.ReLU: "rectifier",
    nn.ReLU6: "rectifier",
    nn.LeakyReLU: "rectifier",
    nn.PReLU: "rectifier",
    nn.RReLU: "rectifier",
    nn.ELU: "rectifier",
    nn.CELU: "rectifier",
    nn.SELU: "rectifier",
    nn.GELU: "rectifier",
    nn.SiLU: "rectifier",
    nn.Mish: "rectifier",
    nn.Softplus: "rectifier",
    nn.Hardswish: "rectifier",
    nn.LogSigmoid: "other",
    nn.Softmax: "other",
    nn.LogSoftmax: "other",
}


def activation_family(module: nn.Module) -> str | None:
    """Return "sigmoid", "tanh", "rectifier", "other" or None for a non-activation module."""
    for cls in type(module).__mro__:
        fam = ACTIVATION_FAMILIES.get(cls)  # type: ignore[call-overload]
        if fam is not None:
            return fam
    return None


@dataclass(frozen=True)
class Layer:
    """One layer of a model: a module that owns parameters directly."""

    name: str
    module: nn.Module
    param_names: tuple[str, ...]  # qualified names of the parameters it owns

    @property
    def type_name(self) -> str:
        """The module's class name, e.g. "Linear"."""
        return type(self.module).__name__

    def parameters(self) -> list[nn.Parameter]:
        """The parameters the layer owns (:func:`own_parameters`)."""
        return own_parameters(self.module)


def own_named_parameters(module: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """(name, parameter) of the parameters ``module`` owns, names relative to it.

    Its direct parameters, and for a parametrized module the ones its parametrizations hold
    (``parametrizations.weight.original``): the tensors its weight is computed from.
    """
    out = list(module.named_parameters(recurse=False))
    if parametrize.is_parametrized(module):
        out += [(f"parametrizations.{n}", p)
                for n, p in module.parametrizations.named_parameters()]
    return out


def own_parameters(module: nn.Module) -> list[nn.Parameter]:
    """The parameters ``module`` owns (:func:`own_named_parameters`), without names."""
    return [p for _, p in own_named_parameters(module)]


def find_layers(model: nn.Module) -> list[Layer]:
    """Return the layers of ``model`` in registration order.

    Raises:
        GradwatchTypeError: ``model`` is not an ``nn.Module``.
        GradwatchValueError: ``model`` has no parameters.
    """
    if not isinstance(model, nn.Module):
        raise GradwatchTypeError(
            f"model must be a torch.nn.Module, got {type(model).__name__}; "
            "pass the network itself (e.g. an nn.Sequential), not its output or state dict"
        )
    layers = []
    inside = parametrization_modules(model)
    for name, module in model.named_modules(remove_duplicate=True):
        if name in inside:
            continue
        own = [
            (f"{name}.{pname}" if name else pname)
            for pname, p in own_named_parameters(module)
            if isinstance(p, torch.Tensor)
        ]
        if own:
            layers.append(Layer(name=name or "(root)", module=module, param_names=tuple(own)))
    if not layers:
        raise GradwatchValueError(
            f"model has no parameters ({type(model).__name__} owns no nn.Parameter); "
            "gradwatch watches parameter gradients, so give it a model with trainable layers"
        )
    return layers


def parametrization_modules(model: nn.Module) -> set[str]:
    """Qualified names of the modules that implement parametrizations (and all below them).

    ``torch.nn.utils.parametrize`` keeps them in a ``parametrizations`` ModuleDict of the
    parametrized module; they run when the weight is read, not on the layer's input.
    """
    out: set[str] = set()
    for name, module in model.named_modules(remove_duplicate=True):
        if parametrize.is_parametrized(module):
            prefix = f"{name}.parametrizations" if name else "parametrizations"
            out.update(f"{prefix}.{sub}" if sub else prefix
                       for sub, _ in module.parametrizations.named_modules())
    return out


def check_hookable(model: nn.Module) -> None:
    """Refuse a model gradwatch cannot hang hooks on: TorchScript (scripted or traced) modules.

    Raises:
        GradwatchTypeError: ``model`` is, or contains, a ``torch.jit.ScriptModule``.
    """
    for name, module in model.named_modules():
        if isinstance(module, torch.jit.ScriptModule):
            where = "model is" if not name else f"model's submodule {name!r} is"
            raise GradwatchTypeError(
                f"{where} a TorchScript module ({type(module).__name__}), which takes no Python "
                "hooks; pass the nn.Module before torch.jit.script or torch.jit.trace "
                "(gradwatch reads gradients through hooks)"
            )


def find_activations(model: nn.Module) -> list[tuple[str, nn.Module, str]]:
    """Return (name, module, family) for each activation module, in registration order."""
    out = []
    for name, module in model.named_modules(remove_duplicate=True):
        fam = activation_family(module)
        if fam is not None:
            out.append((name, module, fam))
    return out
