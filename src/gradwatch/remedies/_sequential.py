"""Helpers for the remedies that restructure an nn.Sequential (insert_norm, add_residual).

Only a plain ``nn.Sequential`` (or a subclass that keeps its ``forward``) can be
restructured safely: its entries run one after another, so the order of its modules is the
order of computation. A model with its own ``forward`` may call its modules in any order,
several times, or with functions in between, and cannot be followed.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from torch import nn

from gradwatch.errors import GradwatchValueError
from gradwatch.remedies._targets import check_model, is_weight_layer


def is_plain_sequential(module: nn.Module) -> bool:
    """Tell whether ``module`` is an nn.Sequential whose forward is nn.Sequential's own."""
    return isinstance(module, nn.Sequential) and type(module).forward is nn.Sequential.forward


def check_sequential(model: object, remedy: str) -> nn.Sequential:
    """Return ``model`` if it is a plain nn.Sequential; raise a gradwatch error otherwise."""
    check_model(model)
    if not is_plain_sequential(model):  # type: ignore[arg-type]
        raise GradwatchValueError(
            f"model: {remedy} can only restructure an nn.Sequential (entries called in order, "
            f"nested nn.Sequential allowed), but {type(model).__name__} has its own forward(), "
            "so the order its modules run in is unknown; apply it to the nn.Sequential parts "
            f"(e.g. model.body = {remedy}(model.body)) or change the model's code by hand"
        )
    return model  # type: ignore[return-value]


def entries(seq: nn.Sequential) -> list[tuple[str, nn.Module]]:
    """(key, module) of each entry in call order, repeats included (unlike named_children)."""
    return list(seq._modules.items())  # type: ignore[arg-type]


def set_entries_(seq: nn.Sequential, items: Iterable[tuple[str, nn.Module]]) -> None:
    """Replace the entries of ``seq`` in place by ``items``, in that order."""
    items = list(items)
    for key in list(seq._modules):
        delattr(seq, key)
    for key, module in items:
        seq.add_module(key, module)


def unique_key(base: str, taken: set[str]) -> str:
    """Return ``base`` (or ``base_1``, ``base_2``, ...) not yet in ``taken``, and add it."""
    key, n = base, 0
    while key in taken:
        n += 1
        key = f"{base}_{n}"
    taken.add(key)
    return key


def block_sizes(model: nn.Module) -> list[int]:
    """Block sizes to try for add_residual: the spacing of the Linear/Conv entries, then 2, 3."""
    if not is_plain_sequential(model):
        return [2]  # add_residual raises the explanatory error; fix records it
    positions = [i for i, (_, m) in enumerate(entries(model)) if is_weight_layer(m)]  # type: ignore[arg-type]
    gaps = Counter(b - a for a, b in zip(positions, positions[1:], strict=False))
    sizes = [gaps.most_common(1)[0][0]] if gaps else []
    return list(dict.fromkeys([*sizes, 2, 3]))
