"""Update statistics: ``weight_norm`` and ``update_ratio = ||delta w|| / ||w||``.

Hot path, at steps that record them: before the optimizer step the parameters are copied into
a preallocated snapshot with one fused ``torch._foreach_copy_``; after it, one fused
``torch._foreach_sub_`` leaves ``w_before - w_after`` in the snapshot, and two fused
``torch._foreach_norm`` calls give ``||delta w||`` and ``||w||`` per tensor. ``||w||`` is taken
after the step. The update ratio is the standard "is this layer learning" number: around 1e-3
per step is typical for SGD-like training; far below that, the layer has stalled.

Host side: per layer, ``weight_norm = sqrt(sum ||w_p||^2)`` and
``update_ratio = sqrt(sum ||dw_p||^2) / weight_norm``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from gradwatch.stats.gradient import NormPlan
from gradwatch.stats.registry import define_block, define_statistic, keep_rank0

F32 = torch.float32


def weight_block(params: Sequence[torch.Tensor], plan: NormPlan | None = None) -> torch.Tensor:
    """Float32 norms of the parameters (P,)."""
    return (plan or NormPlan(params)).norms(params)


def update_block(
    snapshot: list[torch.Tensor], params: Sequence[torch.Tensor], plan: NormPlan | None = None
) -> torch.Tensor:
    """Turn ``snapshot`` (w before) into w_before - w_after in place; return (dw, w) norms (2P,)."""
    plan = plan or NormPlan(params)
    torch._foreach_sub_(snapshot, list(params))
    return torch.cat([plan.norms(snapshot), plan.norms(params)])


def _per_layer(sq: np.ndarray, param_ids, layer_params) -> tuple[list[int], np.ndarray]:
    col = {pid: j for j, pid in enumerate(param_ids)}
    layers, vals = [], []
    for li, pids in layer_params.items():
        cols = [col[q] for q in pids if q in col]
        if cols:
            layers.append(li)
            vals.append(np.sqrt(sq[:, cols].sum(axis=1)))
    return layers, np.stack(vals, axis=1) if vals else np.zeros((sq.shape[0], 0))


def decode_weight(values: np.ndarray, param_ids, layer_params):
    """Host side: (steps, P) norms -> per-layer ``weight_norm``."""
    layers, w = _per_layer(values.astype(np.float64) ** 2, param_ids, layer_params)
    return {"weight_norm": (layers, w)} if layers else {}


def decode_update(values: np.ndarray, param_ids, layer_params):
    """Host side: (steps, 2P) (dw, w) norms -> per-layer ``update_ratio`` and ``weight_norm``."""
    p = len(param_ids)
    sq = values.astype(np.float64) ** 2
    layers, dw = _per_layer(sq[:, :p], param_ids, layer_params)
    _, w = _per_layer(sq[:, p:], param_ids, layer_params)
    if not layers:
        return {}
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(w > 0, dw / w, np.nan)
    return {"weight_norm": (layers, w), "update_ratio": (layers, ratio)}


define_block(
    "weight",
    lambda values, key, layout: decode_weight(values, key, layout.layer_params),
    keep_rank0,
    "per parameter: L2 norm of the weights; key: the parameter indices",
)
define_block(
    "update",
    lambda values, key, layout: decode_update(values, key, layout.layer_params),
    keep_rank0,
    "per parameter: ||w_before - w_after||, then ||w_after||; key: the parameter indices",
)
_SAME = "every rank holds the same weights under DDP: rank 0's value"
define_statistic(
    "weight_norm", "update", "update", "detail",
    "L2 norm of the layer's parameters (after the optimizer step)", _SAME,
)
define_statistic(
    "update_ratio", "update", "update", "detail", "||delta w|| / ||w|| over the optimizer step",
    _SAME,
)
