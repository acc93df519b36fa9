"""Gradient statistics: ``grad_norm``, ``grad_rms``, ``grad_max_abs``, ``nonfinite``.

Hot path (once per recorded step, over all parameter gradients of the model):

- squared L2 norms from one fused ``torch._foreach_norm`` call;
- max |g| (at the steps that record it; by default every ``detail_every``-th recorded step)
  from ``torch.aminmax`` per tensor. No fused kernel computes it cheaply on CPU
  (``_foreach_norm(ord=inf)`` is ~10x slower here, ``_foreach_abs``/``_foreach_neg`` allocate
  a copy of every gradient), so this is the one per-tensor launch in the gradient block;
- NaN/Inf counts. A norm is finite iff every entry is finite and the sum of squares does not
  overflow, so the counts are computed only when the total norm is not finite. On CPU that
  test reads a CPU scalar (no device synchronisation exists there); on accelerators the count
  is computed every step with a fused kernel (``_foreach_norm(g * 0, ord=0)`` counts the
  entries that are NaN after multiplying by zero, i.e. the non-finite ones), so no host sync
  happens between flushes.

Host side: per layer, ``grad_norm = sqrt(sum of squared norms of its parameters)``,
``grad_rms = grad_norm / sqrt(numel)``, ``grad_max_abs = max``, ``nonfinite = sum``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

F32 = torch.float32


def grad_block(grads: Sequence[torch.Tensor], with_max: bool = True) -> tuple[torch.Tensor, bool]:
    """Return ``(block, has_counts)`` for the given gradients (hot path).

    ``block`` is float32: the P norms, then (``with_max``) the P max-abs values, then (when
    ``has_counts``) the P non-finite counts. All gradients must live on one device.
    """
    norms = torch.stack(torch._foreach_norm(grads, 2, dtype=F32))  # (P,)
    parts = [norms]
    if with_max:
        # (min, max) of every gradient: max|g| = max(-min, max)
        mm = torch.stack([x for g in grads for x in torch.aminmax(g)]).to(F32).view(-1, 2)
        parts.append(mm.abs().amax(1))  # (P,)
    if norms.device.type == "cpu":
        # CPU: reading a CPU scalar costs no synchronisation.
        if bool(torch.isfinite(norms.sum())):
            return (torch.cat(parts) if len(parts) > 1 else norms), False
        counts = torch.stack([(~torch.isfinite(g)).sum() for g in grads]).to(F32)
    else:
        zeros = torch._foreach_mul(grads, 0.0)  # NaN where g is NaN or +-Inf
        counts = torch.stack(torch._foreach_norm(zeros, 0, dtype=F32))
    parts.append(counts)
    return torch.cat(parts), True


def decode_grad(
    values: np.ndarray,
    has_counts: bool,
    has_max: bool,
    param_ids: Sequence[int],
    layer_params: dict[int, list[int]],
    numel: np.ndarray,
) -> dict[str, tuple[list[int], np.ndarray]]:
    """Host side: blocks of many steps -> per-layer statistics.

    Args:
        values: (steps, P to 3P) float array of stacked blocks.
        has_counts: whether the non-finite counts part is present.
        has_max: whether the max-abs part is present.
        param_ids: the model parameter index of each of the P columns.
        layer_params: layer index -> model parameter indices it owns.
        numel: number of elements of each model parameter.

    Returns:
        stat name -> (layer indices, (steps, layers) values).
    """
    p = len(param_ids)
    norms = values[:, :p]
    maxabs = values[:, p : 2 * p] if has_max else None
    off = 2 * p if has_max else p
    counts = values[:, off : off + p] if has_counts else None
    col = {pid: j for j, pid in enumerate(param_ids)}
    layers, gn, gr, gm, nf = [], [], [], [], []
    for li, pids in layer_params.items():
        cols = [col[q] for q in pids if q in col]
        if not cols:
            continue
        layers.append(li)
        norm = np.sqrt(np.sum(norms[:, cols].astype(np.float64) ** 2, axis=1))
        gn.append(norm)
        gr.append(norm / np.sqrt(float(sum(numel[param_ids[c]] for c in cols))))
        if maxabs is not None:
            gm.append(np.max(maxabs[:, cols], axis=1))
        nf.append(np.sum(counts[:, cols], axis=1) if counts is not None else np.zeros(len(norm)))
    if not layers:
        return {}
    stack = lambda xs: np.stack(xs, axis=1)  # noqa: E731
    out = {
        "grad_norm": (layers, stack(gn)),
        "grad_rms": (layers, stack(gr)),
        "nonfinite": (layers, stack(nf)),
    }
    if gm:
        out["grad_max_abs"] = (layers, stack(gm))
    return out
