"""The sharded-parameter tap: exact parameter statistics under FSDP2, HSDP and tensor parallel.

When the watched parameters are DTensors (:mod:`gradwatch.monitor.sharding`), this tap
produces ``grad_norm``, ``grad_rms``, ``nonfinite``, ``grad_max_abs``, ``weight_norm`` and
``update_ratio`` in place of the parameter-gradient and update taps (they step aside: they
read ``ctx.sharded``). Per parameter it reduces the rank's local shard (sums of squares,
max |g|, NaN/Inf counts; copies along ``Replicate`` mesh dimensions counted once; ``Partial``
gradients as their values) into blocks of :mod:`gradwatch.stats.sharded`, whose registry
entries say how they reduce over the mesh. In ``collect`` each block goes to
``rec.all_reduce`` with those segments: the step's blocks share **one** bucketed collective,
and a step that is not recorded makes none.

Under tensor parallelism the back-propagated signal (``backprop_norm``, ``time_*``) is
combined by :mod:`gradwatch.monitor.tensor_parallel`, in the same collective. The NaN
forensics (``input_nonfinite``, ``weight_nonfinite``, ``forward_nonfinite``) are off for
sharded models: their replay of the forward pass on one rank would wait for the other ranks.

A statistic that fails on one rank of several is not skipped with a warning, as elsewhere:
that rank's part of the step's collective would be missing and the others would wait for it.
The exception is raised where it happened (in ``optimizer.step()`` or ``Monitor.step()``),
so that rank ends with it and the others end on the lost connection, within seconds.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from gradwatch.monitor.gradpass import GradPass
from gradwatch.monitor.sharding import (
    check_model,
    counts_here,
    has_partial,
    local,
    without_partial_and_shard,
)
from gradwatch.monitor.tap import Record, StepPlan, Tap, register_tap
from gradwatch.stats.registry import mesh_segments
from gradwatch.stats.sharded import local_counts, local_max_abs, local_squares

F32 = torch.float32


def counted(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``values`` where this rank counts them, 0 elsewhere (an Inf copy leaves no NaN)."""
    return torch.where(mask, values, torch.zeros((), dtype=values.dtype, device=values.device))


@register_tap
class ShardTap(Tap):
    """Parameter statistics of a sharded model, reduced over its mesh within the step."""

    name = "shard"
    sources = ("grad", "update")

    def install(self) -> None:
        """Find the layout (None: the model is not sharded and this tap does nothing)."""
        ctx = self.ctx
        self.layout = check_model(ctx.model, ctx.params, ctx.process_group, ctx.distributed)
        ctx.sharded = self.layout
        self.rank, self.root = 0, 0
        if dist.is_available() and dist.is_initialized():
            self.rank = dist.get_rank()
            group = ctx.process_group
            self.root = dist.get_global_rank(group, 0) if group is not None else 0
        self.here: dict[int, bool] = {}  # per tensor: whether this rank counts its part
        self.grad_block: tuple[tuple, torch.Tensor] | None = None
        self.update_block: tuple[int, torch.Tensor] | None = None
        self.snapshot: list[torch.Tensor] | None = None
        self.manual_step: int | None = None
        self.detail = self.with_max = False
        self.masks: dict[tuple, torch.Tensor] = {}
        self.counted_here: tuple[bool, ...] = ()  # the last mask, on the host
        self.checked = False
        if self.layout is None:
            return
        # the NaN forensics replay a forward pass on the rank that saw the NaN: on a sharded
        # model that pass would wait for the other ranks' all-gathers forever
        ctx.sources = ctx.sources - {"origin"}

    def begin_step(self, plan: StepPlan) -> None:
        """What this step records: gradients (max |g| at its tier), weights at detail steps."""
        self.grad_block = None
        if self.layout is None:
            return
        self.with_max = plan.due("grad_max_abs")
        self.detail = plan.recorded and plan.detail and "update" in self.ctx.sources

    def mask(self, tensors: list, device: torch.device) -> torch.Tensor:
        """(P,) bool: where this rank's part of the tensor is counted (kept per layout)."""
        here = self.here
        key = []
        for t in tensors:
            placements = getattr(t, "placements", None)
            k = (id(getattr(t, "device_mesh", None)), placements)
            c = here.get(k)
            if c is None:
                c = here[k] = counts_here(t, self.rank, self.root)
            key.append(c)
        key = tuple(key)
        self.counted_here = key  # the same on the host
        m = self.masks.get(key)
        if m is None:
            m = self.masks[key] = torch.tensor(key, dtype=torch.bool, device=device)
        return m

    def on_gradients(self, gp: GradPass) -> None:
        """Per parameter: local sums of squares, max |g|, counts; Partial gradients as values."""
        if not self.checked:  # once, sharded or not: fully_shard after gw.watch
            self.checked = True
            self._check_watched_after_sharding()
        if self.layout is None or not gp.grads or "grad" not in self.ctx.sources:
            return
        try:
            with torch.no_grad():
                grads = [without_partial_and_shard(g) for g in gp.grads]
                locs = [local(g).detach() for g in grads]
                dev = locs[0].device
                mask = self.mask(grads, dev)
                counted_here = self.counted_here
                sq = local_squares(locs)
                counts = local_counts(locs, sq)
                mx = local_max_abs(locs) if self.with_max else None
                partial = tuple((pid, locs[i].numel()) for i, (pid, g) in
                                enumerate(zip(gp.pids, grads, strict=True)) if has_partial(g))
                raws = []
                if partial:  # their statistics come from the summed values, on the host
                    keep = mask.clone()  # a CPU/device bool per parameter
                    pos = {pid: i for i, pid in enumerate(gp.pids)}
                    for pid, _ in partial:
                        keep[pos[pid]] = False
                        if mx is not None:
                            mx[pos[pid]] = 0.0
                        raw = locs[pos[pid]].reshape(-1).to(F32)
                        here = counted_here[pos[pid]]
                        raws.append(raw if here else torch.zeros_like(raw))
                    mask = keep
                parts = [counted(sq, mask), *([mx] if mx is not None else []),
                         counted(counts, mask), *raws]
                key = (gp.pids, self.with_max, partial)
                self.grad_block = (key, torch.cat(parts))
        except Exception as exc:  # noqa: BLE001 - never take training down
            self._failed(f"gradient statistics under {self.layout}", exc)

    def _check_watched_after_sharding(self) -> None:
        current = {id(p) for p in self.ctx.model.parameters()}
        if any(id(p) not in current for p in self.ctx.params):
            self.ctx.warn(
                "parameter statistics of parameters the model replaced after gw.watch "
                "(fully_shard and parallelize_module do: call gw.watch after them)"
            )

    # -- weights and updates ----------------------------------------------------------------
    def _weights(self) -> tuple[list[torch.Tensor], torch.Tensor]:
        params = self.ctx.params
        locs = [local(p).detach() for p in params]
        return locs, self.mask(params, locs[0].device)

    def before_optimizer_step(self) -> None:
        """Copy the local shards of the weights at detail steps."""
        if self.layout is None or not self.detail:
            return
        try:
            locs, _ = self._weights()
            self.snapshot = [t.clone() for t in locs]
        except Exception as exc:  # noqa: BLE001
            self._failed(f"weight_norm and update_ratio under {self.layout}", exc)

    def after_optimizer_step(self) -> None:
        """||w_before - w_after||^2 and ||w_after||^2 of the local shards, for the next collect."""
        if self.layout is None or self.snapshot is None:
            return
        ctx = self.ctx
        if ctx.optimizers:
            step = ctx.plan.step
        else:  # manual mode: the update of the last recorded snapshot's step
            if self.manual_step is None:
                return
            step, self.manual_step = self.manual_step, None
        try:
            with torch.no_grad():
                locs, mask = self._weights()
                before, self.snapshot = self.snapshot, None
                dw = local_squares(torch._foreach_sub(before, locs))
                w = local_squares(locs)
                self.update_block = (step, torch.cat([counted(dw, mask), counted(w, mask)]))
        except Exception as exc:  # noqa: BLE001
            self._failed(f"weight_norm and update_ratio under {self.layout}", exc)

    # -- the step's blocks: one bucketed collective -------------------------------------------
    def collect(self, rec: Record) -> None:
        """Hand the step's blocks to the bucket with their registry mesh reductions; emit."""
        if self.layout is None:
            return
        group = self.ctx.process_group
        if self.grad_block is not None and not rec.skipped:
            key, block = self.grad_block
            out = rec.all_reduce(block, mesh_segments("shard_grad", key), group)
            rec.emit("shard_grad", key, out)
        self.grad_block = None
        if self.update_block is not None:
            step, block = self.update_block
            self.update_block = None
            pids = self.ctx.all_pids
            out = rec.all_reduce(block, mesh_segments("shard_update", pids), group)
            self.ctx.emit(step, "shard_update", pids, out)
        if self.detail and not self.ctx.optimizers:
            # manual mode: the weights now, and a snapshot for the next step() call
            try:
                locs, mask = self._weights()
                with torch.no_grad():
                    w = counted(local_squares(locs), mask)
                pids = self.ctx.all_pids
                rec.emit("shard_weight", pids,
                         rec.all_reduce(w, mesh_segments("shard_weight", pids), group))
                self.snapshot = [t.clone() for t in locs]
                self.manual_step = rec.step
            except Exception as exc:  # noqa: BLE001
                self._failed(f"weight_norm and update_ratio under {self.layout}", exc)

    def _failed(self, what: str, exc: Exception) -> None:
        """A statistic failed on this rank: warn, or raise where skipping it would hang.

        With several ranks, skipping would leave this rank's part out of the step's one
        collective while the others wait in it (or change its size, which gloo answers by
        aborting the process). The exception is raised as it is instead: this rank ends
        with it on top, and the others end on the lost connection.
        """
        if self.ctx.distributed:
            raise exc
        self.ctx.warn(what, exc)

    def remove(self) -> None:
        """Drop buffers."""
        self.snapshot = self.grad_block = self.update_block = None
