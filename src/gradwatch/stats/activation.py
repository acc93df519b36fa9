"""Activation statistics: ``act_mean``, ``act_std``, ``saturated_frac``, ``dead_frac``.

Kept for activation modules (nn.ReLU, nn.Tanh, nn.Sigmoid, ...), attached to the layer that ran
just before the activation. The forward hook only keeps a reference to the output (autograd
keeps these tensors alive for the backward pass anyway); the statistics are computed once when
the step closes:

- sum and sum of squares per call (accumulated in float32 over the tensor, combined in float64
  on the host): ``act_mean = S / n``, ``act_std = sqrt(SS / n - mean^2)`` (population std over
  every element of the batch). This is about ten times cheaper here than ``torch.var_mean``;
- ``saturated_frac`` (sigmoid- and tanh-like activations): the fraction of outputs in the flat
  tails, where the derivative is at most ~6% (tanh: |a| > 0.97) or ~12% (sigmoid: a < 0.03 or
  a > 0.97) of its maximum;
- ``dead_frac`` (ReLU-like activations): the fraction of units (every position after the batch
  dimension) that are never positive over the whole batch. With several calls in one step
  (gradient accumulation) the fractions of the calls are averaged.

References:
    Glorot & Bengio 2010 (saturation of sigmoid and tanh units); Lu et al., "Dying ReLU and
    Initialization", 2019 (dead units).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from gradwatch.stats import acc_dtype

F32 = torch.float32

#: Threshold on |a - centre| above which a unit counts as saturated, per family.
SATURATION = {"tanh": (0.0, 0.97), "sigmoid": (0.5, 0.47)}
FAMILY_CODE = {"sigmoid": 1, "tanh": 2, "rectifier": 3, "other": 0}


def act_block(
    acts: Sequence[torch.Tensor], families: Sequence[str], detail: bool = True
) -> torch.Tensor:
    """Return the float32 block for the kept activations: (calls, 4) flattened.

    Columns: sum, sum of squares, saturated count (NaN if not applicable), dead units (NaN if
    not applicable). Activations of the same shape, dtype and family are stacked and reduced
    together (a few kernels per group instead of a few per call: most networks repeat one
    block shape).
    """
    groups: dict[tuple, list[int]] = {}
    for i, (a, fam) in enumerate(zip(acts, families, strict=True)):
        groups.setdefault((a.shape, a.dtype, a.device, fam), []).append(i)
    rows: list[torch.Tensor] = []
    order: list[int] = []
    for (shape, _, _, fam), idx in groups.items():
        x = torch.stack([acts[i] for i in idx]) if len(idx) > 1 else acts[idx[0]].unsqueeze(0)
        batch = shape[0] if len(shape) >= 2 else 1
        x = x.reshape(len(idx), batch, -1)  # (G, B, units)
        acc = acc_dtype(x.dtype)
        sums = x.sum(dim=(1, 2), dtype=acc).to(F32)
        sumsq = (torch.linalg.vector_norm(x, dim=(1, 2), dtype=acc) ** 2).to(F32)
        nan = torch.full_like(sums, float("nan"))
        sat, dead = nan, nan
        if detail and fam in SATURATION:
            centre, thr = SATURATION[fam]
            dev = x.abs() if centre == 0.0 else (x - centre).abs_()
            sat = (dev > thr).sum(dim=(1, 2)).to(F32)
        if detail and fam == "rectifier" and len(shape) >= 2:
            dead = (x.amax(dim=1) <= 0).sum(dim=1).to(F32)
        rows.append(torch.stack([sums, sumsq, sat, dead], dim=1))  # (G, 4)
        order.extend(idx)
    out = torch.cat(rows) if len(rows) > 1 else rows[0]
    if order != list(range(len(order))):
        inv = torch.argsort(torch.tensor(order, device=out.device))
        out = out.index_select(0, inv)
    return out.reshape(-1)


def decode_act(
    values: np.ndarray, calls: Sequence[tuple[int, int, int, int]]
) -> dict[str, tuple[list[int], np.ndarray]]:
    """Host side: (steps, calls*4) -> per-layer activation statistics.

    ``calls`` holds, per call, (layer index, family code, numel, units).
    """
    v = values.astype(np.float64).reshape(values.shape[0], len(calls), 4)
    layer_of = np.array([c[0] for c in calls])
    numel = np.array([c[2] for c in calls], dtype=np.float64)
    units = np.array([c[3] for c in calls], dtype=np.float64)
    out: dict[str, tuple[list[int], list[np.ndarray]]] = {}

    def put(stat: str, li: int, val: np.ndarray) -> None:
        out.setdefault(stat, ([], []))
        out[stat][0].append(li)
        out[stat][1].append(val)

    for li in sorted(set(layer_of.tolist())):
        m = layer_of == li
        n = numel[m].sum()
        s, ss = v[:, m, 0].sum(axis=1), v[:, m, 1].sum(axis=1)
        mean = s / n
        put("act_mean", li, mean)
        put("act_std", li, np.sqrt(np.maximum(ss / n - mean**2, 0.0)))
        sat = v[:, m, 2]
        if not np.all(np.isnan(sat)):
            ok = ~np.isnan(sat[0])
            put("saturated_frac", li, sat[:, ok].sum(axis=1) / numel[m][ok].sum())
        dead = v[:, m, 3]
        if not np.all(np.isnan(dead)):
            ok = ~np.isnan(dead[0])
            put("dead_frac", li, np.mean(dead[:, ok] / units[m][ok], axis=1))
    return {k: (ls, np.stack(vs, axis=1)) for k, (ls, vs) in out.items()}
