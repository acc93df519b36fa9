"""Norms of the back-propagated signal under tensor parallelism, exact over the ranks.

Under tensor parallelism (``parallelize_module``; with FSDP2 outside it, the 2-D layout) the
ranks of a tensor-parallel group see the same batch, and each holds either a slice of a
layer's output (and of d loss / d output) or the whole of it:

- ``ColwiseParallel`` output, and ops on it (an activation): sharded on the hidden
  dimension; sequence parallelism's outputs: sharded on the sequence dimension. The ranks'
  sums of squares add up.
- ``RowwiseParallel`` output, modules tensor parallelism leaves alone, the model's input:
  a copy on every rank. Each rank contributes ``1 / group size`` of its square, so that the
  group counts it once.

Which one is read from the layer's output (:func:`gradwatch.monitor.sharding.output_share`):
the placements of a DTensor, or of the ``to_local`` calls the plain output was computed from
(found in the autograd graph, once per layer). Over the data-parallel dimension the groups
combine as DDP's ranks do: the union's d loss / d output stacks the D groups' shares, each
scaled by 1/D, so ``norm = sqrt(sum over all ranks of the weighted squares) / D``. The
weighted squares go into the step's one bucketed collective (``Record.all_reduce``) and the
host takes the root (:mod:`gradwatch.stats.sharded`'s ``shard_bp`` and ``shard_time``).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

from gradwatch.monitor.hookkit import tensors_in
from gradwatch.monitor.sharding import Share, has_partial, output_share, share_of
from gradwatch.monitor.tap import Record
from gradwatch.stats.registry import mesh_segments

#: A layer whose output mixes differently sharded tensors: left out, with a warning.
MIXED = "mixed"


class TensorParallelShares:
    """Per layer, how the ranks hold its output; the weighted squares' reduction."""

    def __init__(self, ctx: Any, what: str) -> None:
        self.ctx = ctx
        self.what = what
        self.shares: dict[Any, Share | str | None] = {}
        self.sizes: set[int] = set()  # sizes of the tensor-parallel meshes met

    def see_output(self, li: Any, out: Any) -> None:
        """Classify a layer's output once (its first tensor that requires grad)."""
        if li in self.shares:
            return
        for t in tensors_in(out):
            if t.requires_grad:
                self.see_tensor(li, t)
                return

    def see_tensor(self, li: Any, t: torch.Tensor) -> None:
        """Classify the tensor ``t`` for the key ``li`` (kept: layouts do not change)."""
        try:
            share, sizes = output_share(t)
        except ValueError as exc:
            self.shares[li] = MIXED
            self.ctx.warn(f"{self.what} of a layer whose output mixes sharded tensors", exc)
            return
        self.shares[li] = share
        self.sizes |= sizes

    def see_grad(self, li: Any, grad: torch.Tensor) -> torch.Tensor:
        """A DTensor gradient: its placements classify the layer; returns the local tensor.

        A ``Partial`` gradient (an addend on each rank) is summed first: one collective, at
        the same point of every rank's backward pass.
        """
        if has_partial(grad):
            from torch.distributed.tensor import Replicate

            grad = grad.redistribute(grad.device_mesh,
                                     [Replicate() if p.is_partial() else p
                                      for p in grad.placements])
        share = share_of(grad.device_mesh, grad.placements)
        self.shares[li] = share
        if share is not None:
            self.sizes.add(share.ranks)
        return grad.to_local()

    def groups(self) -> tuple[int, int] | None:
        """(tensor-parallel group size, number D of data-parallel groups); None: unknown."""
        ctx = self.ctx
        world = dist.get_world_size(ctx.process_group) if ctx.distributed else 1
        if len(self.sizes) != 1:
            why = ("no layer output is a tensor-parallel DTensor" if not self.sizes else
                   f"layer outputs lie on meshes of different sizes {sorted(self.sizes)}")
            self.ctx.warn(f"{self.what} under {ctx.sharded} ({why})")
            return None
        tp = next(iter(self.sizes))
        if world % tp:
            self.ctx.warn(f"{self.what} under {ctx.sharded} (a tensor-parallel mesh of {tp} "
                          f"ranks does not divide the {world} ranks)")
            return None
        return tp, world // tp

    def weight(self, share: Share | str | None, tp: int) -> float:
        """The factor on this rank's squared norm (a copy on every rank: 1 / tp)."""
        return 1.0 / tp if share is None else share.weight()  # type: ignore[union-attr]

    def emit(self, rec: Record, kind: str, key: tuple, squares: torch.Tensor,
             weights: list[float], dp: int) -> None:
        """Reduce the weighted squares over the ranks in the step's bucket; emit the block."""
        w = torch.tensor(weights, dtype=squares.dtype, device=squares.device)
        full_key = (key, dp)
        out = rec.all_reduce(squares * w, mesh_segments(kind, full_key), self.ctx.process_group)
        rec.emit(kind, full_key, out)

    def emit_squares(self, rec: Record, kind: str, layers: tuple, squares: torch.Tensor) -> None:
        """Per layer squared norms -> the ``kind`` block of the layers that can be combined."""
        groups = self.groups()
        if groups is None:
            return
        tp, dp = groups
        keep = [j for j, li in enumerate(layers) if self.shares.get(li, None) != MIXED]
        if len(keep) < len(layers):
            layers = tuple(layers[j] for j in keep)
            squares = squares[keep]
        if not layers:
            return
        weights = [self.weight(self.shares.get(li), tp) for li in layers]
        self.emit(rec, kind, layers, squares, weights, dp)
