"""One bucketed collective per recorded step, for the taps that need the ranks' values.

Most statistics are combined across ranks at the flush, from each rank's blocks (the registry
says how). Some need the other ranks within the step: a layer whose parameters are sharded
(FSDP2, tensor parallel) has its sum of squares spread over ranks, and a tap wants the
reduced value in its block. Such a tap calls :meth:`~gradwatch.monitor.tap.Record.all_reduce`
during :meth:`~gradwatch.monitor.tap.Tap.collect`; the Monitor then runs this bucket once,
after every tap has collected: the requests of each process group are flattened into one
float32 buffer and reduced with **one** collective (``all_reduce`` when every request of the
group asks for the same operation, one ``all_gather`` of the buffer otherwise, reduced per
request on the device). A step that requests nothing makes no collective; nothing is read on
the host.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

from gradwatch.errors import DistributedFlushError

OPS = ("sum", "max", "min")
_REDUCE_OP = {"sum": "SUM", "max": "MAX", "min": "MIN"}


class StepBucket:
    """The all-reduce requests of one recorded step (see the module docstring)."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self._requests: dict[Any, list[tuple[torch.Tensor, str, torch.Tensor]]] = {}

    def add(self, tensor: torch.Tensor, op: Any, group: Any) -> torch.Tensor:
        """A tensor that holds ``tensor`` reduced over ``group`` after :meth:`run`.

        ``op`` is one of :data:`OPS` for every entry, or segments ``((op, count), ...)`` of
        the flattened tensor (a sum of squares and a max |g| in one block, say).
        """
        segments = _segments(op, tensor.numel())
        if not self.enabled:
            return tensor
        out = torch.empty(tensor.shape, dtype=torch.float32, device=tensor.device)
        flat = tensor.detach().reshape(-1).to(torch.float32)
        group_reqs = self._requests.setdefault(group, [])
        start = 0
        for seg_op, count in segments:
            part = slice(start, start + count)
            group_reqs.append((flat[part], seg_op, out.view(-1)[part]))
            start += count
        return out

    def __bool__(self) -> bool:
        return bool(self._requests)

    def run(self) -> None:
        """One collective per process group; the results go into the returned tensors."""
        requests, self._requests = self._requests, {}
        for group, reqs in requests.items():
            try:
                _reduce_group(group, reqs)
            except RuntimeError as exc:  # DistBackendError and gloo's errors
                raise DistributedFlushError(
                    "gradwatch: a statistic's collective within the step failed because "
                    f"another rank stopped ({str(exc).splitlines()[0][:200]})"
                ) from exc


def _segments(op: Any, n: int) -> list[tuple[str, int]]:
    if isinstance(op, str):
        op = ((op, n),)
    segments = [(o, int(c)) for o, c in op]
    if any(o not in OPS for o, _ in segments) or sum(c for _, c in segments) != n:
        raise ValueError(
            f"op must be one of {OPS} or segments ((op, count), ...) covering the {n} entries, "
            f"got {op!r}"
        )
    return [(o, c) for o, c in segments if c]


def _reduce_group(group: Any, reqs: list[tuple[torch.Tensor, str, torch.Tensor]]) -> None:
    flat = torch.cat([t for t, _, _ in reqs])
    ops = {op for _, op, _ in reqs}
    if len(ops) == 1:
        dist.all_reduce(flat, op=getattr(dist.ReduceOp, _REDUCE_OP[ops.pop()]), group=group)
        reduced = None
    else:  # mixed operations: gather every rank's buffer once, reduce each request here
        world = dist.get_world_size(group)
        parts = [torch.empty_like(flat) for _ in range(world)]
        dist.all_gather(parts, flat, group=group)
        reduced = torch.stack(parts)  # (world, n)
    off = 0
    for t, op, out in reqs:
        n = t.numel()
        if reduced is None:
            val = flat[off : off + n]
        else:
            col = reduced[:, off : off + n]
            val = col.sum(0) if op == "sum" else col.amax(0) if op == "max" else col.amin(0)
        out.copy_(val)
        off += n
