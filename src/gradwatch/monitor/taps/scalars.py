"""The run-level tap (layer ``""``): ``loss``, ``skipped`` and ``loss_scale``, clipping.

- ``loss``: what ``mon.step(loss=...)`` was given, the mean over the calls of the step, kept
  on its device (see :mod:`gradwatch.stats.scalar`); a loss given after ``optimizer.step()``
  closed the step goes to that step.
- ``skipped`` / ``loss_scale`` (with ``scaler=``): the Monitor notes the scale of the step's
  backward (``ctx.scale_used``) and whether GradScaler skipped the step (``ctx.skipped``).
- ``clip_norm`` / ``clip_coef``: gradwatch's clipping tells this tap what it did through a
  listener (:mod:`gradwatch.monitor.listeners`), when it clipped this model's gradients.
"""

from __future__ import annotations

from typing import Any

import torch

from gradwatch.monitor.listeners import add_clip_listener, remove_clip_listener
from gradwatch.monitor.tap import Record, StepPlan, Tap, register_tap

F32 = torch.float32


@register_tap
class ScalarTap(Tap):
    """The loss, GradScaler's skip flag and scale, and gradient clipping (layer "")."""

    name = "scalars"
    sources = ("loss", "scaler", "clip")

    def install(self) -> None:
        """Listen to gradwatch's clipping when clipping statistics are asked for."""
        self.losses: list[torch.Tensor] = []
        self.clip: Any = None  # the last ClipResult of gradwatch's clipping on this model
        self.recorded = False
        self._param_ids = {id(p) for p in self.ctx.params}
        self._clip_ref = None
        if "clip" in self.ctx.sources:
            self._clip_ref = add_clip_listener(self._on_clip)

    def begin_step(self, plan: StepPlan) -> None:
        """Forget the previous step's losses and clipping."""
        self.losses = []
        self.clip = None
        self.recorded = plan.recorded

    def _on_clip(self, result: Any, params: list[torch.Tensor]) -> None:
        # gradwatch's clipping ran: keep its tensors if it clipped this model's gradients
        if self.recorded and params and id(params[0]) in self._param_ids:
            self.clip = result

    def on_loss(self, value: torch.Tensor, step: int | None) -> None:
        """Keep the pending step's loss, or emit a loss given after its step closed."""
        if step is not None:  # the step optimizer.step() just closed
            self.ctx.emit(step, "loss", (), value)  # made float32 and flat at the flush
        elif self.recorded:
            self.losses.append(value)

    def collect(self, rec: Record) -> None:
        """The loss, clipping and GradScaler blocks of the step."""
        if self.losses:
            losses = self.losses
            if len({t.device for t in losses}) > 1:
                losses = [t.cpu() for t in losses]  # rare: floats and device tensors mixed
            rec.emit("loss", (), torch.stack(losses).to(F32).mean().reshape(1))
        if self.clip is not None:
            norm, coef = self.clip
            dev = norm.device
            rec.emit("clip", (), torch.stack([norm.float(), coef.float().to(dev)]))
        used = self.ctx.scale_used
        if used is not None:
            flag = self.ctx.flags(used.device)[int(rec.skipped)]
            rec.emit("scaler", (), torch.cat([flag, used.reshape(1)]))

    def remove(self) -> None:
        """Stop listening to clipping."""
        if self._clip_ref is not None:
            remove_clip_listener(self._clip_ref)
            self._clip_ref = None
