"""``lr``: the learning rate the optimizer applied to each layer's parameters (opt-in).

The update ratio ``||delta w|| / ||w||`` is read against the learning rate that made the
update: a schedule's warm-up, decay or restart changes it step by step, and a layer whose
update ratio collapses while its learning rate is unchanged has stalled for another reason.
Recorded after each recorded optimizer step, from the optimizers' parameter groups (the
learning rate that step used; a scheduler changes it afterwards). A layer whose parameters
sit in groups with different rates records the largest; a layer no optimizer steps records
none. Needs ``optimizer=``, and is recorded only when named: ``stats=[..., "lr"]``.

Block ``lr``: one value per parameter group, in the order of the optimizers and their
groups; the key lists, per layer, the groups that hold its parameters.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from gradwatch.stats.registry import define_block, define_statistic, keep_rank0


def decode_lr(values: np.ndarray, key: Sequence[tuple[int, tuple[int, ...]]]):
    """Host side: (steps, groups) rates, key ((layer, its groups), ...) -> per-layer ``lr``."""
    if not key:
        return {}
    v = values.astype(np.float64)
    layers = [li for li, _ in key]
    out = np.stack([v[:, list(groups)].max(axis=1) for _, groups in key], axis=1)
    return {"lr": (layers, out)}


define_block(
    "lr",
    lambda values, key, layout: decode_lr(values, key),
    keep_rank0,
    "the learning rate of each parameter group; key: (layer, groups holding its parameters)",
)
define_statistic(
    "lr", "lr", "lr", "fast",
    "learning rate the optimizer applied to the layer's parameters at the step (the largest "
    "over its parameter groups; opt-in: stats=[..., 'lr'])",
    "rank 0's value (every rank runs the same optimizer)",
    default=False,
)
