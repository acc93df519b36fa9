"""Swap the activation modules of a model, and re-initialise the layers that feed them."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

from torch import nn

from gradwatch.argcheck import check_bool
from gradwatch.errors import GradwatchTypeError, GradwatchValueError
from gradwatch.layers import activation_family
from gradwatch.remedies._gains import following_activations
from gradwatch.remedies._targets import check_model, restore_on_error
from gradwatch.remedies.init_schemes import he_init_, lecun_init_, xavier_init_

#: Activation names accepted wherever an activation class is expected.
ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "leaky_relu": nn.LeakyReLU,
    "prelu": nn.PReLU,
    "relu6": nn.ReLU6,
    "elu": nn.ELU,
    "celu": nn.CELU,
    "selu": nn.SELU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "swish": nn.SiLU,
    "mish": nn.Mish,
    "softplus": nn.Softplus,
    "hardswish": nn.Hardswish,
    "tanh": nn.Tanh,
    "hardtanh": nn.Hardtanh,
    "softsign": nn.Softsign,
    "sigmoid": nn.Sigmoid,
    "hardsigmoid": nn.Hardsigmoid,
    "linear": nn.Identity,
    "identity": nn.Identity,
}


def swap_activation(
    model: nn.Module,
    old: type[nn.Module] | str,
    new: type[nn.Module] | str | nn.Module | Callable[[], nn.Module],
    reinit: bool = True,
    *,
    inputs: Any = None,
) -> list[str]:
    """Replace, in place, every activation module of type ``old`` by a new ``new`` module.

    Entries of nn.Sequential/ModuleList/ModuleDict and module attributes are replaced
    alike, at any depth; a module registered in several places is replaced by one shared
    new module. Activations called as functions in a ``forward`` (``F.sigmoid``) are not
    modules and cannot be swapped.

    With ``reinit``, each Linear/Conv layer whose output now goes into a new activation is
    re-drawn with the init that keeps variance for it: He for the ReLU family (with the
    module's own slope for leaky ReLU), LeCun for SELU and identity, Xavier for tanh and
    sigmoid-like units. Other layers keep their weights.

    Args:
        model: the network, changed in place.
        old: the activation class to replace (subclasses included) or its name, e.g.
            ``nn.Sigmoid`` or "sigmoid".
        new: a class, a name ("relu", "gelu", ...), a module to copy, or a factory that
            returns a fresh module, e.g. ``lambda: nn.LeakyReLU(0.1)``.
        reinit: re-initialise the layers that feed the new activations.
        inputs: a batch, to find which layer feeds which activation by running the model
            (registration order otherwise).

    Returns:
        The qualified names of the replaced modules; empty if there was nothing to swap.

    Raises:
        GradwatchValueError: an unknown activation name, or ``model`` itself is an ``old``.
        GradwatchTypeError: ``old``/``new`` are not modules, classes, names or factories.

    References:
        Glorot, Bordes, Bengio 2011, "Deep Sparse Rectifier Neural Networks";
        Klambauer et al. 2017, "Self-Normalizing Neural Networks".

    """
    check_model(model)
    check_bool("reinit", reinit)
    old_cls = _resolve_class(old)
    make = _resolve_factory(new)
    if isinstance(model, old_cls):
        raise GradwatchValueError(
            f"model is itself a {old_cls.__name__}; swap_activation replaces activations "
            "inside a network, so pass the network that holds it"
        )
    slots = [
        (f"{pname}.{key}" if pname else key, parent, key, child)
        for pname, parent in model.named_modules()
        for key, child in parent._modules.items()
        if child is not None and isinstance(child, old_cls)
    ]
    if not slots:
        return []
    replaced: dict[int, nn.Module] = {}
    try:
        with restore_on_error(model):
            for _, parent, key, child in slots:
                if id(child) not in replaced:
                    replaced[id(child)] = _fresh(make, child)
                setattr(parent, key, replaced[id(child)])
            if reinit:
                _reinit_(model, replaced, inputs)
    except BaseException:
        for _, parent, key, child in slots:
            setattr(parent, key, child)
        raise
    return [name for name, *_ in slots]


def _reinit_(model: nn.Module, replaced: dict[int, nn.Module], inputs: Any) -> None:
    new_ids = {id(m) for m in replaced.values()}
    following = following_activations(model, inputs)
    layers = [name for name, act in following.items() if act is not None and id(act) in new_ids]
    if not layers:
        return
    sample = next(iter(replaced.values()))
    family = activation_family(sample)
    if isinstance(sample, (nn.SELU, nn.Identity)):
        lecun_init_(model, layers=layers)
    elif family == "rectifier":
        he_init_(model, inputs, layers=layers)
    elif family in ("tanh", "sigmoid"):
        xavier_init_(model, layers=layers)


def _fresh(make: Callable[[], nn.Module], old: nn.Module) -> nn.Module:
    module = make()
    if not isinstance(module, nn.Module):
        raise GradwatchTypeError(
            f"new must make an nn.Module, but its factory returned {type(module).__name__}; "
            "pass an activation class, name or module, or a function returning one"
        )
    param = next(old.parameters(), None)  # PReLU → PReLU keeps device/dtype
    if param is not None:
        module = module.to(device=param.device, dtype=param.dtype)
    return module.train(old.training)


def _resolve_class(old: object) -> type[nn.Module]:
    if isinstance(old, str):
        return _by_name("old", old)
    if isinstance(old, type) and issubclass(old, nn.Module):
        return old
    raise GradwatchTypeError(
        f"old must be an activation class (e.g. nn.Sigmoid) or name (e.g. 'sigmoid'), got {old!r}"
    )


def _resolve_factory(new: object) -> Callable[[], nn.Module]:
    if isinstance(new, str):
        return _by_name("new", new)
    if isinstance(new, nn.Module):
        return lambda: copy.deepcopy(new)
    if isinstance(new, type) and not issubclass(new, nn.Module):
        raise GradwatchTypeError(f"new must be an nn.Module class, got {new.__name__}")
    if callable(new):
        _fresh(new, nn.Identity())  # fail now, before anything is replaced
        return new  # type: ignore[return-value]
    raise GradwatchTypeError(
        f"new must be an activation class, name, module or factory, got {type(new).__name__}"
    )


def _by_name(arg: str, name: str) -> type[nn.Module]:
    cls = ACTIVATIONS.get(name.lower().replace("-", "_"))
    if cls is None:
        raise GradwatchValueError(
            f"{arg}={name!r} is not a known activation name; use one of "
            f"{', '.join(sorted(ACTIVATIONS))} or pass a class"
        )
    return cls
