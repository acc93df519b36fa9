"""``backprop_norm``: the L2 norm of d loss / d output of each layer.

This is the back-propagated signal of Glorot & Bengio (2010): it can shrink geometrically
toward the input while the weight gradients look flat, so it is the first thing to look at.

Hot path: a forward hook on the layer (installed once) hangs a hook on its output tensor (a
function built once per layer, installed as ``Tensor.register_hook`` would but without the
removable handle it builds per call); during backward that hook writes the norm of the
incoming gradient (float32 accumulation: ``vector_norm``, or a BLAS dot for float32 gradients
of 16 384 entries or more, which is faster there) into a preallocated device buffer. A layer
called several times in a step (shared module, recurrent cell, gradient accumulation)
contributes several norms. Of the mechanisms PyTorch offers this is the cheapest measured on
CPU (``benchmarks/overhead.py``, ../shared/PERF_NOTES.md: a node pre-hook costs a little more,
``register_multi_grad_hook`` ~3x, a full backward hook ~5x, an autograd Function per layer
~2x); it is still ~8-10 µs of Python per layer, so by default the statistic is taken at
detail steps (every ``detail_every``-th recorded step).

Host side: ``backprop_norm = sqrt(sum of squared norms over the calls of the step)``: the norm
of the gradient with respect to everything the layer output in that step. Under GradScaler the
norms are divided by the loss scale on the device before they are kept.

References:
    Glorot & Bengio, "Understanding the difficulty of training deep feedforward neural
    networks", AISTATS 2010.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from gradwatch.stats.registry import define_block, define_statistic


def decode_backprop(
    values: np.ndarray, call_layers: Sequence[int]
) -> dict[str, tuple[list[int], np.ndarray]]:
    """Host side: (steps, calls) norms -> per-layer ``backprop_norm`` (steps, layers)."""
    call_layers = np.asarray(call_layers)
    layers = sorted(set(call_layers.tolist()))
    sq = values.astype(np.float64) ** 2
    out = np.stack([np.sqrt(sq[:, call_layers == li].sum(axis=1)) for li in layers], axis=1)
    return {"backprop_norm": (layers, out)}


def _combine(values: np.ndarray, key, world: int):
    # the global d L / d output stacks the ranks' shares, each scaled by 1/W
    return np.sqrt((values.astype(np.float64) ** 2).sum(axis=0)) / world, key


define_block(
    "bp",
    lambda values, key, layout: decode_backprop(values, key),
    _combine,
    "one L2 norm of d loss / d output per layer call; key: the layer index of each call",
)
define_statistic(
    "backprop_norm", "bp", "backprop", "detail",
    "L2 norm of d loss / d output of the layer (the back-propagated signal)",
    "sqrt(sum over ranks of norm^2) / W: the ranks' shares of the global gradient",
)
