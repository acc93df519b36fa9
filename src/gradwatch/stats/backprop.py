"""``backprop_norm``: the L2 norm of d loss / d output of each layer.

This is the back-propagated signal of Glorot & Bengio (2010): it can shrink geometrically
toward the input while the weight gradients look flat, so it is the first thing to look at.

Hot path: a forward hook on the layer registers a tensor hook on each output that requires
grad; during backward that hook takes one fused ``vector_norm`` of the incoming gradient
(float32 accumulation) and keeps the 0-d result on the device. A layer called several times in
a step (shared module, recurrent cell, gradient accumulation) contributes several norms.

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


def decode_backprop(
    values: np.ndarray, call_layers: Sequence[int]
) -> dict[str, tuple[list[int], np.ndarray]]:
    """Host side: (steps, calls) norms -> per-layer ``backprop_norm`` (steps, layers)."""
    call_layers = np.asarray(call_layers)
    layers = sorted(set(call_layers.tolist()))
    sq = values.astype(np.float64) ** 2
    out = np.stack([np.sqrt(sq[:, call_layers == li].sum(axis=1)) for li in layers], axis=1)
    return {"backprop_norm": (layers, out)}
