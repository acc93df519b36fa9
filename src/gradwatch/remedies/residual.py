"""Residual connections: wrap runs of same-shape blocks of an nn.Sequential in x + F(x)."""

from __future__ import annotations

import copy
from collections import OrderedDict

import torch
from torch import Tensor, nn

from gradwatch.argcheck import check_bool
from gradwatch.errors import GradwatchValueError
from gradwatch.layers import activation_family
from gradwatch.remedies._sequential import (
    check_sequential,
    entries,
    is_plain_sequential,
    set_entries_,
)
from gradwatch.remedies._targets import check_positive, is_norm_layer, is_weight_layer

_SHAPE_KEEPING = (
    nn.Identity,
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
    nn.AlphaDropout,
)


class Residual(nn.Module):
    """An identity shortcut around a branch: y = x + F(x).

    The Jacobian is I + ∂F/∂x, so the gradient reaches earlier layers through the identity
    even where the branch's own Jacobian is small.

    References:
        He, Zhang, Ren, Sun 2016, "Deep Residual Learning for Image Recognition".

    """

    def __init__(self, branch: nn.Module) -> None:
        super().__init__()
        self.branch = branch

    def forward(self, x: Tensor) -> Tensor:
        """Return ``x + branch(x)``."""
        return x + self.branch(x)


def add_residual(model: nn.Module, block_size: int = 2, zero_init: bool = True) -> nn.Sequential:
    """Return a copy of an nn.Sequential with runs of same-shape blocks made residual.

    Entries are scanned left to right (nested nn.Sequentials on their own): each run of
    ``block_size`` consecutive entries that all keep the shape of their input and contain at
    least one Linear/Conv layer becomes ``Residual(nn.Sequential(run))``. Shape-keeping
    entries are Linear(n, n), Conv with as many output as input channels, stride 1 and
    "same" padding, activations, norm layers, dropout and Identity. So the first and last
    layers, which change the width, stay outside. For [Linear(784, n), ReLU, Linear(n, n),
    ReLU, ..., Linear(n, 10)] this gives the pre-activation layout of He et al. (2016b):
    [Linear(784, n), Residual(ReLU, Linear(n, n)), ..., ReLU, Linear(n, 10)].

    With ``zero_init`` the last Linear/Conv/norm layer of each branch gets weight and bias
    0, so the branch outputs φ(0) = 0 for branches that end in a layer or in ReLU, tanh,
    GELU, ... and each Residual starts as the identity (as in Fixup and Goyal et al. 2017).

    The input model is not modified; the Residual keeps the key of the first entry it
    wraps, and the wrapped entries keep their keys inside ``branch``.

    Args:
        model: a plain nn.Sequential.
        block_size: entries per residual branch, e.g. 2 for [Linear, activation].
        zero_init: zero the last layer of each branch so the network starts as its
            shortcut path.

    Returns:
        The new nn.Sequential.

    Raises:
        GradwatchValueError: ``model`` is not a plain nn.Sequential, or it has no run of
            ``block_size`` shape-keeping entries to wrap.

    References:
        He, Zhang, Ren, Sun 2016, "Deep Residual Learning for Image Recognition";
        He et al. 2016b, "Identity Mappings in Deep Residual Networks".

    """
    seq = check_sequential(model, "add_residual")
    check_positive("block_size", block_size, integer=True)
    check_bool("zero_init", zero_init)
    new = copy.deepcopy(seq)
    if _wrap_runs_(new, block_size, zero_init) == 0:
        raise GradwatchValueError(
            f"model has no run of block_size={block_size} consecutive shape-keeping entries "
            "with a Linear/Conv layer (e.g. Linear(n, n) then an activation) to make "
            "residual; use a smaller block_size or a model with same-width hidden layers"
        )
    return new


def zero_last_layer_(branch: nn.Module) -> str | None:
    """Zero the weight and bias of the last Linear/Conv/norm layer of ``branch``.

    Returns:
        The qualified name of that layer inside ``branch``, or None if it has none.

    """
    last = None
    for name, m in branch.named_modules():
        if is_weight_layer(m) or (is_norm_layer(m) and next(m.parameters(False), None) is not None):
            last = (name, m)
    if last is None:
        return None
    with torch.no_grad():
        for p in last[1].parameters(recurse=False):
            p.zero_()
    return last[0]


def _wrap_runs_(seq: nn.Sequential, block_size: int, zero_init: bool) -> int:
    count = 0
    items = entries(seq)
    for _, m in items:
        if is_plain_sequential(m):
            count += _wrap_runs_(m, block_size, zero_init)  # type: ignore[arg-type]
    out: list[tuple[str, nn.Module]] = []
    i = 0
    while i < len(items):
        run = items[i : i + block_size]
        if (
            len(run) == block_size
            and all(_keeps_shape(m) for _, m in run)
            and any(is_weight_layer(m) for _, m in run)
        ):
            branch = nn.Sequential(OrderedDict(run))
            if zero_init:
                zero_last_layer_(branch)
            out.append((run[0][0], Residual(branch).train(run[0][1].training)))
            count += 1
            i += block_size
        else:
            out.append(items[i])
            i += 1
    set_entries_(seq, out)
    return count


def _keeps_shape(m: nn.Module) -> bool:
    """Tell whether ``m``'s output has its input's shape, as far as its type tells."""
    if isinstance(m, nn.Linear):
        return m.in_features == m.out_features
    if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        if m.in_channels != m.out_channels or any(s != 1 for s in m.stride):
            return False
        if m.padding == "same":
            return True
        span = [d * (k - 1) for d, k in zip(m.dilation, m.kernel_size, strict=True)]
        return all(s % 2 == 0 and p == s // 2 for s, p in zip(span, m.padding, strict=True))
    return (
        activation_family(m) is not None
        or is_norm_layer(m)
        or isinstance(m, (*_SHAPE_KEEPING, Residual))
    )
