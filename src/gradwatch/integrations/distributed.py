"""Watching ``torch.distributed`` training: statistics combined across ranks, written by rank 0.

Under DistributedDataParallel every rank runs ``gw.watch`` on its replica with the same
settings; at each flush (by step count, identical on every rank) the ranks' blocks are gathered
to rank 0 in one collective, combined there, and only rank 0 writes the run directory. When a
rank fails, no rank enters a collective at close: every rank ends with its own exception, the
steps flushed before stay on disk and the run is marked "failed".

The protocol lives in the watch layer, :mod:`gradwatch.monitor.collective` (the Monitor calls
it, and it must not import upward); this module is its public home, with the same names. See
that module for how each statistic is combined.
"""

from __future__ import annotations

from gradwatch.monitor.collective import (
    broadcast_from_rank0,
    combine,
    gather_to_rank0,
    is_distributed,
    rank_and_world,
    to_host,
)

__all__ = [
    "broadcast_from_rank0",
    "combine",
    "gather_to_rank0",
    "is_distributed",
    "rank_and_world",
    "to_host",
]
