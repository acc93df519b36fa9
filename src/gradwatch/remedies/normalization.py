"""Insert BatchNorm or LayerNorm layers into an nn.Sequential."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

from torch import nn

from gradwatch.errors import GradwatchTypeError, GradwatchValueError
from gradwatch.layers import activation_family
from gradwatch.remedies._sequential import (
    check_sequential,
    entries,
    is_plain_sequential,
    set_entries_,
    unique_key,
)
from gradwatch.remedies._targets import check_choice, is_norm_layer, is_weight_layer
from gradwatch.remedies.residual import Residual

_BATCH_NORMS = {0: nn.BatchNorm1d, 1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}

#: Modules that leave the feature (channel) count of their input as it is.
_FEATURE_KEEPING = (
    nn.Identity,
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
    nn.AlphaDropout,
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.MaxPool3d,
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.AvgPool3d,
    nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d,
    nn.AdaptiveMaxPool3d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveAvgPool3d,
    Residual,
)


@dataclass(frozen=True)
class _Features:
    """What a norm layer placed here normalises.

    ``count`` features of a layer of spatial rank ``rank`` (0 for Linear, k for Conv{k}d),
    on ``source``'s device and dtype.
    """

    rank: int
    count: int
    source: nn.Module


@dataclass(frozen=True)
class _Entry:
    name: str  # qualified name in the model
    parent: nn.Sequential
    key: str  # key of the entry in its parent
    module: nn.Module
    features: _Features | None  # of this entry's output; None where unknown


def insert_norm(
    model: nn.Module, kind: str = "batch", after: str | Sequence[str] = "linear"
) -> nn.Sequential:
    """Return a copy of an nn.Sequential with a norm layer after each chosen entry.

    BatchNorm: x̂ = (x − μ_B)/√(σ_B² + ε) over the batch (and positions), y = γ·x̂ + β;
    LayerNorm: the same over the features of each sample. A Linear(·, n) is followed by
    BatchNorm1d(n) or LayerNorm(n); a Conv{k}d(·, c) by BatchNorm{k}d(c) or, for "layer",
    GroupNorm(1, c), which normalises each sample over (c, spatial) like a LayerNorm.

    The input model is not modified. Each norm layer is added right after its entry, in
    the same nn.Sequential, under the key ``"<key>_norm"``; original keys are unchanged, so
    ``new.load_state_dict(old.state_dict(), strict=False)`` carries the weights over.

    Args:
        model: a plain nn.Sequential (nested nn.Sequentials are followed).
        kind: "batch" (Ioffe & Szegedy 2015) or "layer" (Ba et al. 2016, for sequence
            models and small batches).
        after: "linear": after every hidden Linear/Conv, before its activation, as Ioffe &
            Szegedy do; "activation": after every activation that a later Linear/Conv reads;
            or a list of qualified entry names (e.g. ``["0", "block.2"]``). The output
            layer is left alone unless named.

    Returns:
        The new nn.Sequential.

    Raises:
        GradwatchValueError: ``model`` is not a plain nn.Sequential, a bad ``kind`` or
            ``after``, or a chosen entry whose feature count cannot be known (e.g. after a
            Flatten or a custom module).

    References:
        Ioffe & Szegedy 2015, "Batch Normalization"; Ba, Kiros, Hinton 2016, "Layer
        Normalization".

    """
    check_sequential(model, "insert_norm")
    check_choice("kind", kind, ("batch", "layer"))
    new = copy.deepcopy(model)
    walked: list[_Entry] = []
    _walk(new, "", None, walked)  # type: ignore[arg-type]
    chosen = _choose(walked, after)
    by_parent: dict[int, list[_Entry]] = {}
    for e in chosen:
        by_parent.setdefault(id(e.parent), []).append(e)
    for group in by_parent.values():
        parent = group[0].parent
        keys = {e.key for e in group}
        taken = set(parent._modules)
        out = []
        for key, m in entries(parent):
            out.append((key, m))
            if key in keys:
                e = next(e for e in group if e.key == key)
                out.append((unique_key(f"{key}_norm", taken), _make_norm(kind, e)))
        set_entries_(parent, out)
    return new  # type: ignore[return-value]


def _walk(
    seq: nn.Sequential, prefix: str, features: _Features | None, out: list[_Entry]
) -> _Features | None:
    """Append every entry, nested ones first, tracking the feature count; return the last."""
    for key, m in entries(seq):
        name = f"{prefix}.{key}" if prefix else key
        if is_plain_sequential(m):
            features = _walk(m, name, features, out)  # type: ignore[arg-type]
        elif is_weight_layer(m):
            rank = 0 if isinstance(m, nn.Linear) else len(m.kernel_size)  # type: ignore[arg-type]
            count = m.out_features if isinstance(m, nn.Linear) else m.out_channels
            features = _Features(rank, int(count), m)  # type: ignore[arg-type]
        elif not (
            activation_family(m) is not None or is_norm_layer(m) or isinstance(m, _FEATURE_KEEPING)
        ):
            features = None  # Flatten, a custom module, ...: the feature count is unknown
        out.append(_Entry(name, seq, key, m, features))
    return features


def _choose(walked: list[_Entry], after: str | Sequence[str]) -> list[_Entry]:
    weights = [i for i, e in enumerate(walked) if is_weight_layer(e.module)]
    if isinstance(after, str):
        check_choice("after", after, ("linear", "activation"))
        last = weights[-1] if weights else 0
        if after == "linear":
            chosen = [walked[i] for i in weights if i != last]
        else:
            chosen = [
                e for i, e in enumerate(walked[:last]) if activation_family(e.module) is not None
            ]
    elif isinstance(after, Sequence) and all(isinstance(a, str) for a in after):
        names = {e.name: e for e in walked}
        unknown = [a for a in after if a not in names]
        if unknown:
            raise GradwatchValueError(
                f"after names {unknown}, which are not entries of the nn.Sequential; "
                f"its entries are {list(names)}"
            )
        chosen = [names[a] for a in dict.fromkeys(after)]
    else:
        raise GradwatchTypeError(
            f'after must be "linear", "activation" or a list of entry names, got {after!r}'
        )
    if not chosen:
        raise GradwatchValueError(
            f"after={after!r} matches no entry: the model has no hidden Linear/Conv layer "
            "(or activation before one) in its nn.Sequential chain; name the entries instead"
        )
    unknown_size = [e.name for e in chosen if e.features is None]
    if unknown_size:
        raise GradwatchValueError(
            f"after: the feature count after entries {unknown_size} is unknown (no Linear/Conv "
            "before them, or a Flatten/custom module in between); name other entries in after"
        )
    return chosen


def _make_norm(kind: str, entry: _Entry) -> nn.Module:
    f = entry.features
    assert f is not None  # _choose checked it
    if kind == "batch":
        norm: nn.Module = _BATCH_NORMS[f.rank](f.count)
    else:
        norm = nn.LayerNorm(f.count) if f.rank == 0 else nn.GroupNorm(1, f.count)
    weight = f.source.weight  # type: ignore[union-attr]
    return norm.to(device=weight.device, dtype=weight.dtype).train(entry.module.training)
