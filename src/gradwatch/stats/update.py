"""Update statistics: ``weight_norm`` and ``update_ratio = ||delta w|| / ||w||``.

Hot path, at steps that record them: before the optimizer step the parameters are copied into
a :class:`Snapshot` allocated once: same-shape small parameters (the plan's stacked groups)
into one (n, numel) buffer per group with one ``torch.stack(..., out=)``, the others with one
fused ``torch._foreach_copy_``. After the step the current parameters are stacked the same way
into the plan's scratch buffer, ``w_before - w_after`` is formed in place, and one reduction
per group (one fused ``torch._foreach_norm`` for the rest) gives ``||delta w||`` and ``||w||``
per tensor. On a 200-layer MLP this is ~2x cheaper than per-tensor copies and subtractions.
``||w||`` is taken after the step. The update ratio is the standard "is this layer learning"
number: around 1e-3 per step is typical for SGD-like training; far below that, the layer has
stalled.

Host side: per layer, ``weight_norm = sqrt(sum ||w_p||^2)`` and
``update_ratio = sqrt(sum ||dw_p||^2) / weight_norm``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from gradwatch.stats.gradient import NormPlan, rest_norms
from gradwatch.stats.numeric import acc_dtype
from gradwatch.stats.registry import define_block, define_statistic, keep_rank0

F32 = torch.float32


def weight_block(params: Sequence[torch.Tensor], plan: NormPlan | None = None) -> torch.Tensor:
    """Float32 norms of the parameters (P,)."""
    return (plan or NormPlan(params)).norms(params)


class Snapshot:
    """The parameters before an optimizer step, in buffers allocated once (see module doc)."""

    def __init__(self, params: Sequence[torch.Tensor], plan: NormPlan):
        self.plan = plan
        self.dtype, self.device = params[0].dtype, params[0].device
        self.stacked = [plan.new_buffer(params, g) for g in range(len(plan.stacked))]
        self.rest = [torch.empty_like(params[i]) for i in plan.rest]

    def fits(self, params: Sequence[torch.Tensor]) -> bool:
        """Whether the buffers still match the parameters' dtype and device."""
        p0 = params[0]
        return p0.dtype == self.dtype and p0.device == self.device

    def take(self, params: Sequence[torch.Tensor]) -> None:
        """Copy the current parameters in."""
        with torch.no_grad():
            for g, buf in enumerate(self.stacked):
                self.plan.stack(params, g, into=buf)
            if self.rest:
                torch._foreach_copy_(self.rest, [params[i] for i in self.plan.rest])

    def update_norms(self, params: Sequence[torch.Tensor]) -> torch.Tensor:
        """(2P,) float32: ||w_before - w_after|| per parameter, then ||w_after||.

        Leaves the difference in the buffers (the next :meth:`take` overwrites it).
        """
        plan = self.plan
        dws, ws = [], []
        with torch.no_grad():
            for g, snap in enumerate(self.stacked):
                cur = plan.stack(params, g)
                before = snap.buf.view(cur.shape)
                acc = acc_dtype(cur.dtype)
                ws.append(torch.linalg.vector_norm(cur, dim=1, dtype=acc).to(F32))
                dws.append(torch.linalg.vector_norm(before.sub_(cur), dim=1, dtype=acc).to(F32))
            if self.rest:
                cur = [params[i] for i in plan.rest]
                ws.append(rest_norms(cur))
                torch._foreach_sub_(self.rest, cur)
                dws.append(rest_norms(self.rest))
        dw = plan.order(torch.cat(dws) if len(dws) > 1 else dws[0])
        w = plan.order(torch.cat(ws) if len(ws) > 1 else ws[0])
        return torch.cat([dw, w])


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
