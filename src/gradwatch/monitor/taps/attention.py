"""The attention tap: ``attn_logit_max`` and ``attn_entropy_min`` per attention layer.

At detail steps, during the model's forward pass, every call of
``F.scaled_dot_product_attention`` and of ``F.multi_head_attention_forward`` is caught and
reduced on the spot (:mod:`gradwatch.monitor.attention_capture`: a TorchFunctionMode and
module hooks, present only during that forward pass); the rows are emitted when the step
closes (block ``attn``, :mod:`gradwatch.stats.attention`). Nothing is installed at the other
steps beyond two hooks on the root module, and nothing under ``torch.compile``.
"""

from __future__ import annotations

import torch

from gradwatch.monitor.attention_capture import AttentionCapture
from gradwatch.monitor.tap import Record, StepPlan, Tap, register_tap

STATS = ("attn_logit_max", "attn_entropy_min")


@register_tap
class AttentionTap(Tap):
    """The attention logits and entropies of every attention call at detail steps."""

    name = "attention"
    sources = ("attn",)

    def install(self) -> None:
        """The capture's two root hooks, when the attention statistics are asked for."""
        self.capture: AttentionCapture | None = None
        if not self.needed:
            return
        layer_of = {ly.name: i for i, ly in enumerate(self.ctx.layers)}
        self.capture = AttentionCapture(self.ctx.model, layer_of, self.ctx.warn)

    def begin_step(self, plan: StepPlan) -> None:
        """Arm the capture for the forward passes of a detail step (not under compile)."""
        cap = self.capture
        if cap is None:
            return
        cap.take()  # rows of a step that was not recorded (an unscheduled forward pass)
        cap.armed = plan.any_due(STATS) and not self.ctx.compiled

    def collect(self, rec: Record) -> None:
        """Emit the rows of the step's attention calls as one ``attn`` block."""
        cap = self.capture
        if cap is None:
            return
        cap.stop()
        rows = cap.take()
        if not rows:
            return
        key = tuple((li, h) for li, h, _ in rows)
        vals = [r for _, _, r in rows]
        if len({t.device for t in vals}) > 1:
            vals = [t.to(vals[0].device) for t in vals]
        rec.emit("attn", key, torch.cat(vals))

    def remove(self) -> None:
        """Remove the capture's hooks."""
        if self.capture is not None:
            self.capture.remove()
            self.capture = None
