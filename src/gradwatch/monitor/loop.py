"""The schedule of a Monitor and its loop over the taps, step after step.

Each step starts with a :class:`~gradwatch.monitor.tap.StepPlan` (recorded? detail?) that
every tap sees in :meth:`~gradwatch.monitor.tap.Tap.begin_step`, then the per-layer forward
hooks are switched on or off for the step (:class:`~gradwatch.monitor.tracker.LayerTracker`).
The events of the step go to the taps that override them: the model's root forward (two hooks
on the root module), the gradient pass, the optimizer step (through
:class:`~gradwatch.monitor.optim.OptimizerHooks`), a non-finite step, the loss. A recorded
step closes with every tap's :meth:`~gradwatch.monitor.tap.Tap.collect`, then the step's
bucketed collective if any tap asked for one; every ``flush_every`` recorded steps (or
``flush_secs`` seconds) the Monitor flushes. With ``optimizer=``, ``optimizer.step()`` closes a
step before ``mon.step(loss)`` brings its loss: a flush due then waits for that loss (or, if
none comes, for the next forward pass), so that a part never holds a step without its loss.

While another pass runs on the model (``gw.check`` inside a training step) the loop *stands
aside* (:meth:`TapLoop.stand_aside`): the root hooks return at once and every switchable hook
is out of its module, so the step's record stays the training's alone.
"""

from __future__ import annotations

import time
import warnings
from typing import Any

import torch
from torch import nn

from gradwatch.monitor.bucket import StepBucket
from gradwatch.monitor.gradpass import GradPass
from gradwatch.monitor.hookkit import HookSet, disown, own, tensors_in
from gradwatch.monitor.meta import describe_structure
from gradwatch.monitor.optim import OptimizerHooks
from gradwatch.monitor.tap import Record, StepPlan, overrides
from gradwatch.monitor.taps import TAPS
from gradwatch.monitor.tracker import LayerTracker
from gradwatch.stats import native

EVENTS = ("on_forward", "on_forward_done", "on_gradients", "before_optimizer_step",
          "after_optimizer_step", "on_nonfinite", "on_loss", "on_flush")


class TapLoop:
    """The taps of one Monitor, the pending step's plan, and what happens when a step closes.

    Attributes:
        step: index of the pending (not yet closed) step.
        n_recorded: steps recorded so far (a resumed run counts those on disk).
        forward_seen: a forward pass with gradients ran in the pending step.
        all_taps: every tap, in :data:`~gradwatch.monitor.tap.TAPS` order; ``taps``: the active
            ones (those the loop calls).
        flush_due: a flush waits for the loss of the step ``optimizer.step()`` closed.
        aside: how many passes that are not the training's run on the model now.
    """

    def __init__(self, mon: Any, ctx: Any, schedule: Any, step: int, n_recorded: int,
                 dist: bool):
        self.mon, self.ctx, self.schedule = mon, ctx, schedule
        self.step, self.n_recorded = step, n_recorded
        self.forward_seen = False
        self.structure_read = False  # the first forward pass's output graph read
        self.compile_warned = False
        self.late_loss_step = step - 1  # a loss never goes to a step already on disk
        self.flush_due = False
        self.aside = 0
        self.bucket = StepBucket(dist)
        model: nn.Module = ctx.model
        self.handles = [
            own(model.register_forward_pre_hook(self.on_root_forward, with_kwargs=True)),
        ]
        self.tracker = ctx.tracker = LayerTracker(ctx)
        self.all_taps = [cls(ctx) for cls in TAPS]
        ctx.taps = {t.name: t for t in self.all_taps}
        self.tracker.install()
        for tap in self.all_taps:
            tap.install()
        self.taps = [t for t in self.all_taps if t.active]  # the others cost nothing a step
        self.events = {ev: [t for t in self.taps if overrides(t, ev)] for ev in EVENTS}
        # the end of the forward pass: for the taps that listen, and once, for the structure
        # read from the output's graph (removed after that when no tap listens)
        self.done_handle = own(model.register_forward_hook(self.on_root_done))
        self.handles.append(self.done_handle)
        self.optim = OptimizerHooks(self)
        native.refresh()  # the compiled kernels, if this machine has built them

    # -- the schedule ---------------------------------------------------------------------
    def begin_step(self) -> None:
        """Plan the pending step; every tap starts it (resets, switches its hooks)."""
        ctx = self.ctx
        rec = bool(self.schedule(self.step))
        detail = rec and self.n_recorded % self.mon.detail_every == 0
        plan = ctx.plan = StepPlan(self.step, rec, detail, ctx.persistent, ctx.wanted)
        for tap in self.taps:
            tap.begin_step(plan)
        self.tracker.begin_step(self.taps, plan.persistent)

    def dispatch(self, event: str, *args: Any) -> None:
        """Call ``event`` on each tap that overrides it."""
        for tap in self.events[event]:
            getattr(tap, event)(*args)

    # -- the model's forward pass (hooks on the root module) ------------------------------
    def on_root_forward(self, module: nn.Module, args: Any, kwargs: Any) -> Any:
        """Root forward pre-hook: the taps' ``on_forward``; a new forward pass begins.

        A tap may hand back new positional arguments; the model then runs on those.
        """
        if self.aside:
            return None
        if torch.compiler.is_compiling():
            self.ctx.on_compiled()
            return None
        if self.flush_due and not self.ctx.replaying:
            self.mon.flush(wait=False)  # a new step begins: no loss came for the last one
        changed = False
        for tap in self.events["on_forward"]:
            new = tap.on_forward(args, kwargs)
            if new is not None:
                args, changed = new, True
        if torch.is_grad_enabled() and not self.ctx.replaying:
            self.forward_seen = True
            self.tracker.last_layer = -1
        return (args, kwargs) if changed else None

    def on_root_done(self, module: nn.Module, args: Any, out: Any) -> None:
        """Root forward hook: the taps' ``on_forward_done``; the structure from the graph."""
        if not self.aside and not torch.compiler.is_compiling():
            self.dispatch("on_forward_done", args, out)
            if not self.structure_read and not self.ctx.replaying and torch.is_grad_enabled():
                self.read_structure(out)

    def read_structure(self, out: Any) -> None:
        """Once, at the first forward pass: the structure from the output's autograd graph.

        Shortcuts, the residual stream and attention, so that a run whose loss is passed as
        a number keeps them; a loss tensor given to ``Monitor.step`` is read instead (it
        adds what the loss is).
        """
        first = next((t for t in tensors_in(out) if t.grad_fn is not None), None)
        if first is None:
            return
        self.structure_read = True
        found = describe_structure(self.ctx.model, first)
        if found is not None and not self.mon._structure_from_graph:
            self.mon._structure = found
        if not self.events["on_forward_done"]:
            disown([self.done_handle])  # nothing else listens: no hook from now on
            self.done_handle.remove()

    # -- the step's gradients and its end --------------------------------------------------
    def gradient_pass(self) -> None:
        """The step's gradients are complete: one :class:`GradPass` for every tap."""
        if not self.events["on_gradients"]:
            return
        ctx = self.ctx
        gp = GradPass(ctx.params, ctx.all_pids, "grad_max" in ctx.plan.requests)
        self.dispatch("on_gradients", gp)
        if gp.nonfinite:
            self.dispatch("on_nonfinite")

    def end_step(self, loss: torch.Tensor | None) -> None:
        """``Monitor.step(loss)``: attach the loss; in manual mode, close the pending step."""
        ctx = self.ctx
        rec = ctx.plan.recorded
        if ctx.optimizers:
            if loss is not None and not self.forward_seen and self.step > 0:
                prev = self.step - 1  # the step that optimizer.step() just closed
                if self.schedule(prev) and self.late_loss_step != prev:
                    self.late_loss_step = prev  # one loss per step
                    self.dispatch("on_loss", loss, prev)
            elif loss is not None and rec:
                self.dispatch("on_loss", loss, None)
            if self.flush_due:
                self.mon.flush(wait=False)  # the flush that waited for this loss
            return
        # manual mode: the user's optimizer step of the previous step has run by now
        if loss is not None and rec:
            self.dispatch("on_loss", loss, None)
        self.dispatch("after_optimizer_step")
        if rec:
            self.gradient_pass()
            if loss is not None and loss.device.type == "cpu" and not bool(torch.isfinite(loss)):
                self.dispatch("on_nonfinite")  # a CPU scalar: no device sync
        self.close_step()

    def close_step(self) -> None:
        """Close the pending step: every tap collects if it is recorded; plan the next one."""
        ctx, mon = self.ctx, self.mon
        if ctx.compiled and not self.compile_warned:
            self.compile_warned = True
            warnings.warn(
                "gradwatch: the model runs under torch.compile; to keep the compiled graph "
                "whole, backprop_norm and activation statistics are not recorded for it "
                "(gradient, weight, update and loss statistics are). Watch the uncompiled "
                "model for the full set.",
                RuntimeWarning,
                stacklevel=4,
            )
        session = mon._session
        if session.unsettled:
            session.settle()  # the last flush is on disk before this step counts as done
        buffer = session.buffer
        # optimizer.step() closes a recorded step before mon.step(loss) brings its loss
        loss_to_come = bool(ctx.optimizers and ctx.plan.recorded and "loss" in ctx.wanted
                            and not self.taps_loss())
        if ctx.plan.recorded:
            start = len(buffer)
            rec = Record(ctx, self.step, ctx.plan.detail, ctx.skipped, self.bucket)
            for tap in self.taps:
                tap.collect(rec)
            if self.bucket:
                self.bucket.run()  # one collective for every tap's requests of the step
            self._drop_meta(buffer, start)
            self.tracker.step_recorded()
            self.n_recorded += 1
        self.step += 1
        self.forward_seen = False
        self.optim.pre_done = False
        ctx.skipped, ctx.scale_used = False, None
        self.begin_step()
        if buffer and (
            self.flush_due
            or self.n_recorded % mon.flush_every == 0
            or time.monotonic() - mon._last_flush > mon.flush_secs
        ):
            if loss_to_come and not self.flush_due:
                # flush when the loss comes (or at the next forward pass, if it does not), so
                # that the part holds it
                self.flush_due = True
            else:
                mon.flush(wait=False)

    def taps_loss(self) -> bool:
        """Whether the pending step has its loss already (given before its step closed)."""
        tap = self.ctx.tap("scalars")
        return bool(tap is not None and tap.losses)

    def _drop_meta(self, buffer: list[Any], start: int) -> None:
        """Drop the step's blocks that live on the ``meta`` device (they hold no values)."""
        new = buffer[start:]
        if any(b.tensor.is_meta for b in new):
            self.ctx.warn("statistics of tensors on the meta device")
            buffer[start:] = [b for b in new if not b.tensor.is_meta]

    def stand_aside(self, aside: bool) -> None:
        """Let a pass that is not the training's run unseen (``gw.check`` on the model).

        Standing aside takes every switchable hook (the tracker's and the taps') out of its
        module and makes the root hooks return at once; standing back puts back what the
        pending step asked for. Nested calls count.
        """
        self.aside += 1 if aside else -1
        if self.aside == (1 if aside else 0):
            for hooks in self.hook_sets():
                hooks.hold(aside)

    def hook_sets(self) -> list[Any]:
        """The switchable hook sets: the tracker's and each tap's (``hooks`` attribute)."""
        sets = [self.tracker.hooks]
        sets += [t.hooks for t in self.all_taps
                 if isinstance(getattr(t, "hooks", None), HookSet)]
        return sets

    def remove(self) -> None:
        """Remove every hook: the root's, the optimizers', the tracker's and the taps'."""
        disown(self.handles)
        for h in self.handles:
            h.remove()
        self.handles.clear()
        self.optim.remove()
        self.tracker.remove()
        for tap in self.all_taps:
            tap.remove()
