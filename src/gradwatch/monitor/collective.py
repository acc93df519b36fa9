"""The collective protocol of a watched ``torch.distributed`` training (DDP).

Statistics are combined across ranks and written by rank 0. This module sits in the watch
layer (the Monitor calls it); :mod:`gradwatch.integrations.distributed` re-exports it.

Under DistributedDataParallel every rank computes its statistics on its own share of the
batch. At each flush (a step-count schedule, identical on every rank; the time-based flush is
off so that ranks never wait on each other between flushes) the ranks' blocks are gathered to
rank 0 in one collective, combined there, and only rank 0 writes the run directory.

How each block is combined, for DDP's objective L = (1/W) sum_r L_r (W ranks, L_r the loss on
rank r's share, equal shares):

- parameter gradients (``grad``), weights and updates: DDP has already averaged the gradients,
  so every rank holds the same values; rank 0's are kept;
- ``backprop_norm``: the global d L / d output of a layer stacks the ranks' shares, each scaled
  by 1/W, so ``norm = sqrt(sum_r norm_r^2) / W``: norms are combined, not averaged;
- activation sums, sums of squares and counts add up over ranks (``dead_frac`` becomes the
  ranks' average fraction of dead units);
- ``loss``: the mean over ranks.

Failures. A flush is a collective, so a rank that fails must not enter one: the others are
blocked elsewhere (inside DDP's all-reduce) and would never join it. The Monitor therefore
gathers only when it closes normally; a rank whose training raised closes without any
collective and its exception propagates, so its process ends and the peers' pending
collectives fail at once ("connection closed by peer") instead of hanging. Steps flushed
before stay on disk, rank 0 marks the run "failed", and the steps it buffered since the last
collective flush (not combined across ranks) are counted as lost. A collective flush that
fails because a peer is gone raises :class:`~gradwatch.errors.DistributedFlushError` naming
the cause.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from gradwatch.errors import DistributedFlushError
from gradwatch.stats.registry import combine_block


def is_distributed(process_group: Any = None) -> bool:
    """Whether a default (or the given) process group with several ranks is active."""
    if not (dist.is_available() and dist.is_initialized()):
        return False
    return dist.get_world_size(process_group) > 1


def watched_ranks(process_group: Any, distributed: bool | None) -> tuple[bool, int, int]:
    """(whether a Monitor works distributed, its rank, the world size).

    ``distributed=None`` follows :func:`is_distributed`; True or False forces it.
    """
    on = is_distributed(process_group) if distributed is None else distributed
    return (on, *rank_and_world(process_group)) if on else (False, 0, 1)


def rank_and_world(process_group: Any = None) -> tuple[int, int]:
    """(rank, world size) in ``process_group``."""
    return dist.get_rank(process_group), dist.get_world_size(process_group)


def gather_to_rank0(
    structure: list[tuple[int, str, Any, int]], flat: np.ndarray, process_group: Any = None
) -> list[tuple[list, np.ndarray]] | None:
    """Gather every rank's (structure, flat values); rank 0 gets the list, others None.

    Raises:
        DistributedFlushError: the collective failed (another rank stopped or timed out).
    """
    rank, world = rank_and_world(process_group)
    out: list[Any] | None = [None] * world if rank == 0 else None
    dst = dist.get_global_rank(process_group, 0) if process_group is not None else 0
    try:
        dist.gather_object((structure, flat), out, dst=dst, group=process_group)
    except RuntimeError as exc:  # DistBackendError and gloo's errors are RuntimeErrors
        raise DistributedFlushError(
            f"gradwatch: the statistics flush on rank {rank} of {world} failed because "
            f"another rank stopped ({str(exc).splitlines()[0][:200]}); see that rank's error "
            "for the cause. Steps flushed before are kept in the run directory"
        ) from exc
    return out


def broadcast_from_rank0(value: Any, process_group: Any = None) -> Any:
    """Rank 0's ``value`` on every rank (used once, when a resumed run is opened).

    Raises:
        DistributedFlushError: the collective failed (another rank stopped).
    """
    box = [value]
    src = dist.get_global_rank(process_group, 0) if process_group is not None else 0
    try:
        dist.broadcast_object_list(box, src=src, group=process_group)
    except RuntimeError as exc:
        raise DistributedFlushError(
            f"gradwatch: rank 0 could not tell the other ranks where the resumed run "
            f"continues ({str(exc).splitlines()[0][:200]}); see rank 0's error for the cause"
        ) from exc
    return box[0]


def combine(gathered: list[tuple[list, np.ndarray]]) -> tuple[list, np.ndarray]:
    """Combine the ranks' blocks into one (structure, flat) as documented in this module."""
    structure, flat0 = gathered[0]
    world = len(gathered)
    if any(s != structure for s, _ in gathered[1:]):
        warnings.warn(
            "gradwatch: ranks recorded different statistics in one flush (different layers or "
            "steps ran); keeping rank 0's values for this flush",
            RuntimeWarning,
            stacklevel=2,
        )
        return structure, flat0
    flats = np.stack([f for _, f in gathered]).astype(np.float64)  # (W, N)
    out = flats[0].copy()
    new_structure = []
    off = 0
    for step, kind, key, n in structure:
        sl = slice(off, off + n)
        # one definition per block kind: gradwatch.stats.registry says how ranks combine
        out[sl], key = combine_block(kind, flats[:, sl], key, world)
        new_structure.append((step, kind, key, n))
        off += n
    return new_structure, out.astype(np.float32)


def to_host(tensor: torch.Tensor) -> np.ndarray:
    """One device-to-host copy of a flush's values."""
    return tensor.detach().to("cpu", torch.float32).numpy()
