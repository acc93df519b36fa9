"""Gradient statistics: ``grad_norm``, ``grad_rms``, ``grad_max_abs``, ``nonfinite``.

Hot path (once per recorded step, over all parameter gradients of the model):

- squared L2 norms from one fused ``torch._foreach_norm`` call;
- max |g| from ``torch.aminmax`` per tensor. No fused kernel computes it cheaply on CPU
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


def grad_block(grads: Sequence[torch.Tensor]) -> tuple[torch.Tensor, bool]:
    """Return ``(block, has_counts)`` for the given gradients (hot path).

    ``block`` is float32 of length 2P (norms, max-abs) or 3P (plus non-finite counts when
    ``has_counts``). All gradients must live on one device.
    """
    norms = torch.stack(torch._foreach_norm(grads, 2, dtype=F32))  # (P,)
    # (min, max) of every gradient: max|g| = max(-min, max)
    mm = torch.stack([x for g in grads for x in torch.aminmax(g)]).to(F32).view(-1, 2)
    maxabs = mm.abs().amax(1)  # (P,)
    if norms.device.type == "cpu":
        # CPU: reading a CPU scalar costs no synchronisation.
        if bool(torch.isfinite(norms.sum())):
            return torch.cat([norms, maxabs]), False
        counts = torch.stack([(~torch.isfinite(g)).sum() for g in grads]).to(F32)
    else:
        zeros = torch._foreach_mul(grads, 0.0)  # NaN where g is NaN or +-Inf
        counts = torch.stack(torch._foreach_norm(zeros, 0, dtype=F32))
    return torch.cat([norms, maxabs, counts]), True


def decode_grad(
    values: np.ndarray,
    has_counts: bool,
    param_ids: Sequence[int],
    layer_params: dict[int, list[int]],
    numel: np.ndarray,
) -> dict[str, tuple[list[int], np.ndarray]]:
    """Host side: blocks of many steps -> per-layer statistics.

    Args:
        values: (steps, 2P or 3P) float array of stacked blocks.
        has_counts: whether the third (non-finite counts) part is present.
        param_ids: the model parameter index of each of the P columns.
        layer_params: layer index -> model parameter indices it owns.
        numel: number of elements of each model parameter.

    Returns:
        stat name -> (layer indices, (steps, layers) values).
    """
    p = len(param_ids)
    norms, maxabs = values[:, :p], values[:, p : 2 * p]
    counts = values[:, 2 * p : 3 * p] if has_counts else None
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
        gm.append(np.max(maxabs[:, cols], axis=1))
        nf.append(np.sum(counts[:, cols], axis=1) if counts is not None else np.zeros(len(norm)))
    if not layers:
        return {}
    stack = lambda xs: np.stack(xs, axis=1)  # noqa: E731
    return {
        "grad_norm": (layers, stack(gn)),
        "grad_rms": (layers, stack(gr)),
        "grad_max_abs": (layers, stack(gm)),
        "nonfinite": (layers, stack(nf)),
    }
