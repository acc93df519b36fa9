"""Where a NaN came from: ``input_nonfinite``, ``weight_nonfinite``, ``forward_nonfinite``.

When a step's gradients (or its loss) are not finite, the question is where the first NaN or
Inf appeared: in the data, in a weight, in a layer's forward pass, or in the backward pass.
These counts answer the first three; the backward origin stays readable from ``nonfinite``
and ``backprop_norm`` (a layer whose forward output is finite but whose back-propagated
signal or gradients are not).

They cost nothing on healthy steps. The Monitor keeps a reference (not a copy) to the step's
inputs; on a step found non-finite (and at detail steps) it counts NaN/Inf entries in the
inputs and in each layer's parameters as used in the forward pass (before the optimizer
update), and replays the forward pass under ``torch.no_grad`` with those weights, counting
NaN/Inf entries in each layer's first output. The replay leaves the model as it was (buffers
such as BatchNorm's running statistics are restored, the random number generators forked).

Block ``origin``: one count per entry; the key lists (code, layer index) per entry, code 0 for
the input (layer ""), 1 for a layer's weights, 2 for a layer's forward output.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch

from gradwatch.stats.numeric import F32, dense_real
from gradwatch.stats.registry import define_block, define_statistic

CODES = {0: "input_nonfinite", 1: "weight_nonfinite", 2: "forward_nonfinite"}


def count_nonfinite(tensors: Iterable[torch.Tensor], device: torch.device) -> torch.Tensor:
    """Number of NaN/Inf entries over ``tensors`` as a 0-d float32 tensor on ``device``."""
    total = torch.zeros((), dtype=F32, device=device)
    for t in tensors:
        d = dense_real(t.detach())
        if d is None or not d.is_floating_point():
            continue
        total = total + torch.isfinite(d).logical_not_().sum().to(device=device, dtype=F32)
    return total


def decode_origin(values: np.ndarray, key, layout) -> dict[str, tuple[list[int], np.ndarray]]:
    """Host side: (steps, entries) counts -> per-layer (or run-level) counts."""
    out: dict[str, tuple[list[int], list[np.ndarray]]] = {}
    v = values.astype(np.float64)
    for j, (code, li) in enumerate(key):
        layers, cols = out.setdefault(CODES[code], ([], []))
        layers.append(layout.loss_layer if code == 0 else li)
        cols.append(v[:, j])
    return {k: (ls, np.stack(cs, axis=1)) for k, (ls, cs) in out.items()}


def _combine(values: np.ndarray, key, world: int):
    # inputs and forward outputs are the ranks' own shares: counts add up; the weights are
    # the same on every rank: the largest count
    summed, largest = values.sum(axis=0), values.max(axis=0)
    weight = np.array([code == 1 for code, _ in key])
    return np.where(weight, largest, summed), key


define_block(
    "origin",
    decode_origin,
    _combine,
    "NaN/Inf counts in the inputs, each layer's weights and each layer's forward output",
)
define_statistic(
    "input_nonfinite", "origin", "origin", "event",
    "count of NaN/Inf entries in the model's input tensors (layer ''; at non-finite and "
    "detail steps)",
    "sum over ranks (each rank's share of the batch)", scope="run",
)
define_statistic(
    "weight_nonfinite", "origin", "origin", "event",
    "count of NaN/Inf entries in the layer's parameters as used in the step's forward pass "
    "(at non-finite and detail steps)",
    "max over ranks (the weights are the same on every rank)",
)
define_statistic(
    "forward_nonfinite", "origin", "origin", "event",
    "count of NaN/Inf entries in the layer's first output, replayed under no_grad with the "
    "step's weights (at non-finite and detail steps)",
    "sum over ranks (each rank's share of the batch)",
)
