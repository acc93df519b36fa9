"""The per-layer statistics gradwatch records, and what each one needs.

Every statistic is computed in two halves. The *hot path* (called from hooks during training,
on the tensors' own device, fused where PyTorch offers a fused kernel, never synchronising with
the host) turns tensors into a small float32 *block*. The *host side* (run by the background
writer, in NumPy float64) turns blocks into per-layer values. One module per source of data:

- :mod:`gradwatch.stats.gradient`: ``grad_norm``, ``grad_rms``, ``grad_max_abs``, ``nonfinite``
- :mod:`gradwatch.stats.backprop`: ``backprop_norm``
- :mod:`gradwatch.stats.activation`: ``act_mean``, ``act_std``, ``saturated_frac``, ``dead_frac``
- :mod:`gradwatch.stats.update`: ``weight_norm``, ``update_ratio``
- ``loss`` (layer ``""``)
"""

from __future__ import annotations

import torch

#: Statistics recorded at every scheduled step ("fast" tier).
FAST_STATS = ("grad_norm", "grad_rms", "nonfinite", "backprop_norm", "loss")
#: Statistics that change slowly, recorded every ``detail_every``-th recorded step by default.
DETAIL_STATS = (
    "grad_max_abs",
    "weight_norm",
    "update_ratio",
    "act_mean",
    "act_std",
    "saturated_frac",
    "dead_frac",
)
#: Recorded only when gradwatch's clipping functions run on the watched model (layer "").
CLIP_STATS = ("clip_norm", "clip_coef")
ALL_STATS = FAST_STATS + DETAIL_STATS + CLIP_STATS

#: Which statistics each data source produces (a source is computed if any is requested).
SOURCES = {
    "grad": ("grad_norm", "grad_rms", "grad_max_abs", "nonfinite"),
    "backprop": ("backprop_norm",),
    "act": ("act_mean", "act_std", "saturated_frac", "dead_frac"),
    "update": ("weight_norm", "update_ratio"),
    "loss": ("loss",),
    "clip": CLIP_STATS,
}

DESCRIPTIONS = {
    "grad_norm": "L2 norm of the layer's parameter gradients",
    "grad_rms": "root mean square of the layer's parameter gradients (grad_norm / sqrt(numel))",
    "grad_max_abs": "largest absolute parameter gradient in the layer",
    "nonfinite": "count of NaN/Inf entries in the layer's parameter gradients",
    "backprop_norm": "L2 norm of d loss / d output of the layer (the back-propagated signal)",
    "weight_norm": "L2 norm of the layer's parameters (after the optimizer step)",
    "update_ratio": "||delta w|| / ||w|| over the optimizer step",
    "act_mean": "mean of the activation that follows the layer, over the batch",
    "act_std": "standard deviation of that activation over the batch",
    "saturated_frac": "fraction of sigmoid/tanh-like outputs in their flat tails",
    "dead_frac": "fraction of ReLU-like units that are never positive over the batch",
    "loss": "the training loss (layer '')",
    "clip_norm": "global gradient norm before gradwatch's clipping (layer ''; when clipping runs)",
    "clip_coef": "factor the clipping applied, ||g after|| / ||g before|| (layer ''; 1: none)",
}


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulation dtype for a reduction: float64 for float64 tensors, float32 otherwise."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def norm32(t: torch.Tensor) -> torch.Tensor:
    """L2 norm accumulated in float32 (float64 for float64 input), returned as float32."""
    if t.dtype == torch.float64:
        return torch.linalg.vector_norm(t).float()
    return torch.linalg.vector_norm(t, dtype=torch.float32)
