"""Output-logit statistics: ``logit_max`` and ``logsumexp_mean`` (layer ``""``).

A classifier or language model ends in logits z over C classes; the cross-entropy is
``log Σ_c exp(z_c) - z_target``. Nothing in that loss pins the level of the logits: adding a
constant to every z_c changes nothing, so at a high learning rate (and without weight decay)
the logits can drift until their normaliser ``log Z = logsumexp(z)`` is far from 0 and the
softmax loses precision -- the *output-logit divergence* that z-loss, a penalty
``1e-4 · (log Z)²`` added to the loss, holds in place (Chowdhery et al. 2022, PaLM §5;
Wortsman et al. 2023, "Small-scale proxies for large-scale Transformer training
instabilities", §3.2). At recorded (detail) steps, over the model's output:

- ``logit_max``: the largest logit over the batch, the positions and the classes;
- ``logsumexp_mean``: the mean over the batch and positions of ``log Z``.

The class dimension is the last one of an (N, C) output or of a library output's ``.logits``;
for a plain tensor of 3 dimensions or more the Monitor learns it once from the loss's gradient
(a softmax cross-entropy's gradient sums to zero over the classes at every position), so
``(B, T, C)`` and ``F.cross_entropy``'s ``(B, C, T)`` are both read right. A plain ``(N, C)``
output is tested the same way, once: one whose loss's gradient sums to zero along no dimension
(a regression, independent sigmoids) holds no logits and gets neither statistic.

Block ``logits``: ``[max, Σ log Z, number of positions]``, summed over the step's forward
passes (the largest maximum); the key is empty.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from gradwatch.stats.registry import define_block, define_statistic

F32 = torch.float32


def output_logits(output: Any) -> torch.Tensor | None:
    """The logits in a model's output, or None.

    The output itself when it is a tensor, ``.logits`` / ``["logits"]`` of a Hugging Face
    output, or the first element of a tuple; None when there is none or it is not a floating
    point tensor.
    """
    t = output
    if not isinstance(t, torch.Tensor):
        t = getattr(output, "logits", None)
        if t is None and isinstance(output, dict):
            t = output.get("logits")
        if t is None and isinstance(output, tuple | list) and output:
            t = output[0]
    if not isinstance(t, torch.Tensor) or not t.is_floating_point() or t.dim() < 1:
        return None
    return t


def logit_row(logits: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """``[max, Σ logsumexp over dim, positions]`` of one forward pass's logits, float32 (3,)."""
    with torch.no_grad():
        z = logits.detach()
        acc = torch.float64 if z.dtype == torch.float64 else F32
        lse = torch.logsumexp(z.to(acc), dim=dim)
        mx = z.amax().to(acc) if z.numel() else torch.full((), -math.inf, dtype=acc)
        n = torch.full((), float(lse.numel()), dtype=acc, device=z.device)
        return torch.stack([mx, lse.sum(), n]).to(F32)


def merge_rows(rows: list[torch.Tensor]) -> torch.Tensor:
    """Several forward passes of one step: the largest maximum, the sums added."""
    if len(rows) == 1:
        return rows[0]
    st = torch.stack(rows)
    return torch.cat([st[:, 0].amax().reshape(1), st[:, 1:].sum(0)])


def decode_logits(values: np.ndarray, key: Any, layout: Any):
    """Host side: (steps, 3) -> run-level ``logit_max`` and ``logsumexp_mean``."""
    v = values.astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        mean = np.where(v[:, 2] > 0, v[:, 1] / v[:, 2], np.nan)
    mx = np.where(np.isneginf(v[:, 0]), np.nan, v[:, 0])
    layer = [layout.loss_layer]
    return {"logit_max": (layer, mx[:, None]), "logsumexp_mean": (layer, mean[:, None])}


def _combine(values: np.ndarray, key: Any, world: int):
    out = values.sum(axis=0)
    out[0] = values[:, 0].max()
    return out, key


define_block(
    "logits", decode_logits, _combine,
    "the model's output logits: [max, sum of logsumexp over positions, positions], (3,)",
)
define_statistic(
    "logit_max", "logits", "logits", "detail",
    "largest output logit over batch, positions and classes (layer ''; models that output "
    "logits)",
    "max over ranks", scope="run",
)
define_statistic(
    "logsumexp_mean", "logits", "logits", "detail",
    "mean over batch and positions of log Z = logsumexp of the output logits over the "
    "classes (layer ''; the drift z-loss holds)",
    "sums and positions add up over ranks", scope="run",
)
