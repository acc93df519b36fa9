"""The precision tap: what a cast to fp16, bf16, e4m3 or e5m2 would flush or overflow.

At detail steps where a precision statistic is due (:mod:`gradwatch.stats.precision`):

- from the step's gradient pass, every parameter gradient times the loss scale the cast
  sees (the GradScaler's current scale, or ``watch(loss_scale=S)``, or 1), counted into the
  bins of the formats' rounding boundaries: one bucketize and one bincount per same-shape
  group of small gradients (stacked into a buffer kept by a
  :class:`~gradwatch.stats.precision.PrecisionPlan`), one per larger tensor; max and min
  nonzero magnitude alongside;
- from the back-propagated tap (:meth:`~gradwatch.monitor.taps.backprop.BackpropTap.listen`,
  no second hook per layer), each layer's d loss / d output, as backward produced it (scaled
  under GradScaler; times ``loss_scale`` without one), counted the same way per call.

Nothing is read on the host; a step GradScaler skipped records none of them.

Sharded parameters (FSDP2, HSDP, tensor parallel): each rank counts its local shard (copies
along ``Replicate`` mesh dimensions on one rank only; ``Partial`` gradients summed first, one
collective each), and the rows join the step's bucketed collective: counts added, max and
min nonzero reduced with ``max`` and ``min`` (the ``shard_prec_grad`` block).
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from gradwatch.monitor.gradpass import GradPass
from gradwatch.monitor.sharding import counts_here, local, replicated_partial
from gradwatch.monitor.tap import Record, StepPlan, Tap, register_tap
from gradwatch.stats.precision import (
    BP_STATS,
    GRAD_STATS,
    NBINS,
    RANGE_STATS,
    PrecisionPlan,
    bin_counts,
    grad_rows,
    magnitudes,
)
from gradwatch.stats.registry import mesh_segments

F32 = torch.float32


@register_tap
class PrecisionTap(Tap):
    """Underflow and overflow fractions of the gradients and back-propagated signal."""

    name = "precision"
    sources = ("precision",)

    def install(self) -> None:
        """Listen to the back-propagated tap when a ``bp_*`` statistic is asked for."""
        wanted = self.ctx.wanted
        self.grad_wanted = tuple(s for s in GRAD_STATS + RANGE_STATS if s in wanted)
        self.bp_wanted = tuple(s for s in BP_STATS if s in wanted)
        self.plan: PrecisionPlan | None = None
        self.grad_on = False
        self.rows: torch.Tensor | None = None
        self.pids: tuple[int, ...] = ()
        self.bp_rows: list[tuple[int, torch.Tensor]] = []
        self.wanted_here = self.active = self.needed  # asked for at all (fixed for good)
        bp = self.ctx.tap("backprop")
        if self.needed and self.bp_wanted and bp is not None:
            bp.listen(self._on_backprop, lambda plan: plan.any_due(self.bp_wanted))

    def begin_step(self, plan: StepPlan) -> None:
        """Reset the step's rows; whether the gradient part is due."""
        if not self.wanted_here:
            return
        self.rows = None
        self.bp_rows = []
        self.grad_on = plan.any_due(self.grad_wanted)

    def scale(self, backprop: bool) -> torch.Tensor | float:
        """The factor that turns what is read into what the cast sees.

        Under GradScaler, the current scale for the (unscaled) parameter gradients and 1 for
        the back-propagated signal (backward ran on the scaled loss); otherwise the Monitor's
        ``loss_scale`` for both.
        """
        s = self.ctx.scaler
        if s is not None and s.is_enabled() and getattr(s, "_scale", None) is not None:
            return 1.0 if backprop else s._scale.to(F32)
        return float(self.ctx.loss_scale)

    def _on_backprop(self, li: int, grad: torch.Tensor) -> None:
        try:
            if grad.layout != torch.strided or not grad.is_floating_point():
                self.ctx.warn(f"precision statistics of {grad.layout}/{grad.dtype} "
                              "back-propagated gradients")
                return
            self.bp_rows.append((li, bin_counts(magnitudes(grad, self.scale(True)))[0]))
        except Exception as exc:  # noqa: BLE001 - never take training down
            self.ctx.warn("precision statistics of the back-propagated signal", exc)

    def on_gradients(self, gp: GradPass) -> None:
        """Count the step's parameter gradients at the loss scale."""
        self.rows = None
        if not self.grad_on or not gp.grads:
            return
        grads = gp.grads
        try:
            if self.ctx.sharded:
                self.rows, self.pids = self._sharded_rows(grads), gp.pids
                return
            if self.plan is None or not self.plan.fits(grads):
                self.plan = PrecisionPlan(grads)
            self.rows = self.plan.rows(grads, self.scale(False))
            self.pids = gp.pids
        except Exception as exc:  # noqa: BLE001 - sparse, complex or meta gradients
            self.ctx.warn("precision statistics of the parameter gradients", exc)

    def _sharded_rows(self, grads: list) -> torch.Tensor:
        """(P, NBINS + 2) rows of the local shards; copies' counts on one rank only."""
        rank = dist.get_rank() if dist.is_initialized() else 0
        group = self.ctx.process_group
        root = dist.get_global_rank(group, 0) if group is not None else 0
        scale = self.scale(False)
        rows = []
        for g in grads:
            g = replicated_partial(g)
            t = local(g)
            if t.numel():
                r = grad_rows(magnitudes(t, scale))[0]
            else:  # an empty shard: no counts, max 0, no nonzero minimum
                r = torch.zeros(NBINS + 2, dtype=F32, device=t.device)
                r[-1] = torch.inf
            if not counts_here(g, rank, root):
                r[:NBINS] = 0.0
            rows.append(r)
        return torch.stack(rows)

    def collect(self, rec: Record) -> None:
        """One ``prec_grad`` block (per parameter) and one ``prec_bp`` block (per call)."""
        if rec.skipped:
            return
        if self.rows is not None:
            key, flat = (self.pids, self.grad_wanted), self.rows.reshape(-1)
            if self.ctx.sharded:  # reduced over the mesh within the step
                flat = rec.all_reduce(flat, mesh_segments("shard_prec_grad", key),
                                      self.ctx.process_group)
            rec.emit("shard_prec_grad" if self.ctx.sharded else "prec_grad", key, flat)
        if self.bp_rows:
            dev = self.bp_rows[0][1].device
            layers = tuple(li for li, _ in self.bp_rows)
            vals = torch.stack([r.to(dev) for _, r in self.bp_rows]).reshape(-1)
            rec.emit("prec_bp", (layers, self.bp_wanted), vals)

    def remove(self) -> None:
        """Drop the buffers."""
        self.rows = None
        self.bp_rows = []
        if self.plan is not None:
            self.plan.release()
        self.plan = None
