"""The attention tap: ``attn_logit_max`` and ``attn_entropy_min`` per attention layer.

At detail steps, during the model's forward pass, every call of
``F.scaled_dot_product_attention`` and of ``F.multi_head_attention_forward`` is caught and
reduced on the spot (:mod:`gradwatch.monitor.attention_capture`: a TorchFunctionMode and
module hooks, present only during that forward pass); the rows are emitted when the step
closes (block ``attn``, :mod:`gradwatch.stats.attention`). Nothing is installed at the other
steps beyond two hooks on the root module, and nothing under ``torch.compile``.

The capture sees every torch call of the pass, so it is kept to models that attend: a model
made of torch.nn's own modules other than its attention ones cannot call attention
(:func:`~gradwatch.monitor.attention_capture.can_attend`) and gets no capture at all; for any
other model, a detail step whose forward passes made no attention call stands the capture down
for the next ``PROBE_EVERY - 1`` detail steps (a ResNet pays for it once every
``PROBE_EVERY`` detail steps), and once a call is seen it is armed at every detail step.
"""

from __future__ import annotations

import torch

from gradwatch.monitor.attention_capture import AttentionCapture, can_attend
from gradwatch.monitor.tap import Record, StepPlan, Tap, register_tap

STATS = ("attn_logit_max", "attn_entropy_min")
#: A model whose armed passes made no attention call is probed again every this many detail
#: steps.
PROBE_EVERY = 10


@register_tap
class AttentionTap(Tap):
    """The attention logits and entropies of every attention call at detail steps."""

    name = "attention"
    sources = ("attn",)

    def install(self) -> None:
        """The capture's two root hooks, when the attention statistics are asked for."""
        self.capture: AttentionCapture | None = None
        self.quiet = 0  # detail steps left before the capture probes the model again
        self.seen = (0, 0)  # the capture's (passes, calls) when its last armed step began
        if not self.needed or not can_attend(self.ctx.model):
            self.active = False  # no code of this model can call attention
            return
        layer_of = {ly.name: i for i, ly in enumerate(self.ctx.layers)}
        self.capture = AttentionCapture(self.ctx.model, layer_of, self.ctx.warn)

    def begin_step(self, plan: StepPlan) -> None:
        """Arm the capture for the forward passes of a detail step (not under compile)."""
        cap = self.capture
        if cap is None:
            return
        cap.take()  # rows of a step that was not recorded (an unscheduled forward pass)
        passes, calls = self.seen
        if cap.armed and cap.passes > passes and cap.calls == calls == 0:
            self.quiet = PROBE_EVERY - 1  # armed passes, no attention call yet: stand down
        self.seen = (cap.passes, cap.calls)
        due = plan.any_due(STATS) and not self.ctx.compiled
        if due and self.quiet > 0:
            self.quiet -= 1
            due = False
        cap.armed = due

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
