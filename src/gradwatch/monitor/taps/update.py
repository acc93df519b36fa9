"""The update tap: ``weight_norm`` and ``update_ratio = ||delta w|| / ||w||``.

At detail steps, just before the optimizer step, the parameters are copied into a
:class:`~gradwatch.stats.update.Snapshot` allocated once (again only if the model moves to
another device or dtype); after the step, ``||w_before - w_after||`` and ``||w_after||`` are
reduced like the gradients. A step GradScaler skipped records no update.

On CPU, with gradwatch's compiled kernels (:mod:`gradwatch.stats.native`), the snapshot is one
flat buffer filled by one parallel copy, and the update is one read of the weights and of the
snapshot for both norms.

In manual mode (no ``optimizer=``) the weights are read at the recorded step's ``step()``
call, before the user's optimizer step, and the update is measured at the next ``step()``
call, after it.
"""

from __future__ import annotations

import torch

from gradwatch.monitor.tap import Record, StepPlan, Tap, register_tap
from gradwatch.stats import native
from gradwatch.stats.gradient import NormPlan
from gradwatch.stats.update import Snapshot, weight_block


@register_tap
class UpdateTap(Tap):
    """Weight norms and update ratios around the optimizer step."""

    name = "update"
    sources = ("update",)

    def install(self) -> None:
        """The snapshot is allocated at the first detail step."""
        self.active = self.needed
        self.snapshot: Snapshot | None = None
        self.flat: torch.Tensor | None = None  # the compiled path's snapshot
        self.nat = None  # the compiled module that took it
        self.native = True  # the compiled path takes these weights (until it refuses them)
        self.plan: NormPlan | None = None
        self.fresh = False  # a snapshot was taken before this step's optimizer step
        self.manual_step: int | None = None  # manual mode: the step of the last snapshot
        self.detail = False
        self.step = -1

    def begin_step(self, plan: StepPlan) -> None:
        """Whether this step takes the weights (a detail step)."""
        self.fresh = False
        # sharded parameters: the shard tap takes them
        self.detail = self.needed and plan.recorded and plan.detail and not self.ctx.sharded
        self.step = plan.step

    def param_plan(self) -> NormPlan:
        """The norm plan of the parameters (rebuilt if they moved or changed dtype)."""
        params = self.ctx.params
        plan, p0 = self.plan, params[0]
        if plan is None or plan.device != p0.device or plan.dtype != p0.dtype:
            plan = self.plan = NormPlan(params)
        return plan

    def take_snapshot(self) -> None:
        """Copy the parameters into the preallocated snapshot (stacked groups, fused copies)."""
        params, snap = self.ctx.params, self.snapshot
        nat = native.get() if self.native else None
        if nat is not None:
            flat, p0 = self.flat, params[0]
            total = sum(p.numel() for p in params) if flat is None else flat.numel()
            if flat is None or flat.dtype != p0.dtype or flat.device != p0.device:
                flat = self.flat = torch.empty(total, dtype=p0.dtype, device=p0.device)
            try:
                nat.snapshot_take(params, flat)
                self.snapshot, self.nat = None, nat
                return
            except (RuntimeError, TypeError):  # mixed dtypes, not on the CPU: the torch path
                self.native, self.flat = False, None
        if snap is None or not snap.fits(params):
            # allocated once, and again only if the model moved to another dtype/device
            snap = self.snapshot = Snapshot(params, self.param_plan())
        snap.take(params)

    def before_optimizer_step(self) -> None:
        """Copy the weights at detail steps."""
        if not self.detail:
            return
        try:
            self.take_snapshot()
            self.fresh = True
        except Exception as exc:  # noqa: BLE001 - quantized, meta or mixed-device weights
            self.ctx.warn("weight_norm and update_ratio", exc)

    def after_optimizer_step(self) -> None:
        """The update against the snapshot, as one ``update`` block."""
        ctx = self.ctx
        if ctx.optimizers:
            if not self.fresh:
                return
            self.fresh = False
            step, what = self.step, "weight_norm and update_ratio"
        else:  # manual mode: the update of the last recorded snapshot's step
            if self.manual_step is None or (self.snapshot is None and self.flat is None):
                return
            step, what = self.manual_step, "update_ratio"
            self.manual_step = None
        try:
            if self.flat is not None:
                blk = self.nat.update_norms(ctx.params, self.flat)
            else:
                with torch.no_grad():
                    blk = self.snapshot.update_norms(ctx.params)
            ctx.emit(step, "update", ctx.all_pids, blk)
        except Exception as exc:  # noqa: BLE001 - the model moved or changed dtype
            ctx.warn(what, exc)

    def collect(self, rec: Record) -> None:
        """Manual mode: the weights now, and a snapshot for the next ``step()``."""
        ctx = self.ctx
        if not self.detail or ctx.optimizers:
            return
        # no optimizer: weights now; the update is measured at the next step() call
        try:
            with torch.no_grad():
                wblk = weight_block(ctx.params, self.param_plan())
            rec.emit("weight", ctx.all_pids, wblk)
            self.take_snapshot()
            self.manual_step = rec.step
        except Exception as exc:  # noqa: BLE001 - quantized, meta or mixed-device weights
            ctx.warn("weight_norm and update_ratio", exc)

    def remove(self) -> None:
        """Drop the snapshot."""
        self.snapshot = self.flat = None
