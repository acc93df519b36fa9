"""Parameter statistics of sharded models (FSDP2, HSDP, tensor parallel): exact over the mesh.

When parameters and gradients are DTensors, each rank holds a *local shard* of each tensor
(``Shard`` placements), a full copy (``Replicate``), or an addend of it (``Partial``: the
tensor is the sum of the ranks' local tensors, as tensor parallelism leaves the gradients of
sequence-parallel norms). A layer's norm is then spread over the ranks. The blocks here hold
what adds up exactly over a mesh, per parameter, on each rank:

- sums of squares of the local shard, counted on one rank of each ``Replicate`` mesh
  dimension (the others contribute 0, so nothing is counted twice) and summed over the ranks;
- max |g| of the local shard, reduced with ``max`` (a replicated copy changes no maximum);
- NaN/Inf counts, counted like the squares and summed;
- for ``Partial`` gradients, the local values themselves, summed over the ranks into the
  gradient they add up to; the host takes their norm, max |g| and counts;
- under tensor parallelism, the squared norms of the back-propagated signal (``backprop_norm``,
  and the gradient through time of ``time_grad_first``/``time_grad_last``), each weighted
  by what the rank holds of it (:mod:`gradwatch.monitor.tensor_parallel`): summed, their root
  divided by the number D of data-parallel groups is the union batch's norm.

Each kind declares its reduction over the mesh in the registry (``mesh=``): the tap passes
it to ``Record.all_reduce``, one bucketed collective per recorded step for every block. After
it every rank holds the global values, so the flush keeps rank 0's (``keep_rank0``). The host
takes square roots and decodes as the unsharded blocks do (:mod:`gradwatch.stats.gradient`,
:mod:`gradwatch.stats.update`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from gradwatch.stats.backprop import decode_backprop
from gradwatch.stats.gradient import decode_grad, nonfinite_counts, rest_norms
from gradwatch.stats.registry import define_block, keep_rank0
from gradwatch.stats.temporal import decode_time
from gradwatch.stats.update import decode_update, decode_weight

F32 = torch.float32


def local_squares(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """(P,) float32 sums of squares of plain (local) tensors; an empty shard gives 0."""
    if not tensors:
        return torch.zeros(0)
    return rest_norms(tensors).square()


def local_max_abs(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """(P,) float32 max |x| of plain tensors; an empty shard gives 0 (|x| >= 0 elsewhere)."""
    dev = tensors[0].device
    out = [
        t.detach().abs().amax().to(F32) if t.numel() else torch.zeros((), device=dev)
        for t in tensors
    ]
    return torch.stack(out)


def local_counts(tensors: Sequence[torch.Tensor], squares: torch.Tensor) -> torch.Tensor:
    """(P,) float32 NaN/Inf counts; on CPU only counted when the squares are not finite.

    A finite sum of squares means every entry is finite (reading a CPU scalar costs no
    synchronisation); on accelerators the fused count runs every recorded step.
    """
    if squares.device.type == "cpu" and math.isfinite(squares.sum().item()):
        return torch.zeros_like(squares)
    return nonfinite_counts([t.detach() for t in tensors]).to(squares.device)


def grad_segments(key) -> tuple[tuple[str, int], ...]:
    """The mesh reduction of a ``shard_grad`` block (see the module docstring)."""
    pids, with_max, partial = key
    p = len(pids)
    raw = sum(n for _, n in partial)
    return (("sum", p), ("max", p if with_max else 0), ("sum", p), ("sum", raw))


def _decode_grad(values: np.ndarray, key, layout):
    pids, with_max, partial = key
    p = len(pids)
    v = values.astype(np.float64)
    sq = v[:, :p].copy()
    mx = v[:, p : 2 * p].copy() if with_max else None
    off = 2 * p if with_max else p
    counts = v[:, off : off + p].copy()
    off += p
    col = {pid: j for j, pid in enumerate(pids)}
    for pid, n in partial:  # the summed gradient itself: its norm, max |g| and counts here
        raw = v[:, off : off + n]
        off += n
        j = col[pid]
        with np.errstate(invalid="ignore", over="ignore"):
            sq[:, j] = np.sum(raw**2, axis=1)
            if mx is not None:
                mx[:, j] = np.max(np.abs(raw), axis=1) if n else 0.0
        counts[:, j] = np.sum(~np.isfinite(raw), axis=1)
    parts = [np.sqrt(sq)] + ([mx] if mx is not None else []) + [counts]
    return decode_grad(np.concatenate(parts, axis=1), True, with_max, pids,
                       layout.layer_params, layout.numel)


def _decode_update(values: np.ndarray, key, layout):
    return decode_update(np.sqrt(values.astype(np.float64)), key, layout.layer_params)


def _decode_weight(values: np.ndarray, key, layout):
    return decode_weight(np.sqrt(values.astype(np.float64)), key, layout.layer_params)


define_block(
    "shard_grad",
    _decode_grad,
    keep_rank0,
    "sharded gradients, reduced over the mesh within the step: per parameter sums of squares, "
    "max |g| (when taken), NaN/Inf counts, then the summed values of Partial gradients; key: "
    "(parameter indices, with max, ((partial parameter, local numel), ...))",
    mesh=grad_segments,
)
define_block(
    "shard_update",
    _decode_update,
    keep_rank0,
    "sharded parameters, reduced over the mesh within the step: per parameter "
    "||w_before - w_after||^2, then ||w_after||^2; key: the parameter indices",
    mesh=lambda key: (("sum", 2 * len(key)),),
)
define_block(
    "shard_weight",
    _decode_weight,
    keep_rank0,
    "sharded parameters, reduced over the mesh within the step: per parameter ||w||^2; key: "
    "the parameter indices",
    mesh=lambda key: (("sum", len(key)),),
)


def _decode_bp(values: np.ndarray, key, layout):
    layers, dp = key
    return decode_backprop(np.sqrt(values.astype(np.float64)) / dp, layers)


def _decode_time(values: np.ndarray, key, layout):
    rows, dp = key
    return decode_time(np.sqrt(values.astype(np.float64)) / dp, rows)


define_block(
    "shard_bp",
    _decode_bp,
    keep_rank0,
    "tensor parallel: per layer the squared norm of d loss / d output, weighted by the share "
    "the rank holds, summed over the ranks within the step; key: (layer indices, D)",
    mesh=lambda key: (("sum", len(key[0])),),
)
define_block(
    "shard_time",
    _decode_time,
    keep_rank0,
    "tensor parallel: per call the squared norms at the first and last time step, weighted by "
    "the share the rank holds, summed over the ranks within the step; key: (((layer, T), ...), "
    "D)",
    mesh=lambda key: (("sum", 2 * len(key[0])),),
)
