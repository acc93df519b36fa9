"""The Adam tap: ``update_rms`` and ``eps_frac`` per layer, from Adam's state.

After ``optimizer.step()`` at detail steps, for each ``torch.optim.Adam`` / ``AdamW`` the
Monitor watches, the moments in the optimizer's state give each parameter's
``Σ (m̂/(√v̂+ε))²`` and the count of entries where ``ε ≥ √v̂`` (fused ``torch._foreach``
kernels; :mod:`gradwatch.stats.adam`). Other optimizers, and manual mode (no
``optimizer=``), record neither. A step GradScaler skipped records nothing.
"""

from __future__ import annotations

from gradwatch.monitor.tap import StepPlan, Tap, register_tap
from gradwatch.stats.adam import adam_block, is_adam

STATS = ("update_rms", "eps_frac")


@register_tap
class AdamTap(Tap):
    """Adam's update size and ε's share of its denominator."""

    name = "adam"
    sources = ("adam",)

    def install(self) -> None:
        """The Adam-family optimizers among the watched ones (none: the tap does nothing)."""
        self.adams = [o for o in self.ctx.optimizers if is_adam(o)] if self.needed else []
        self.active = bool(self.adams)  # no Adam-family optimizer: nothing to call per step
        self.due = False
        self.step = -1

    def begin_step(self, plan: StepPlan) -> None:
        """Due at detail steps when an Adam optimizer is watched."""
        self.due = bool(self.adams) and plan.any_due(STATS)
        self.step = plan.step

    def after_optimizer_step(self) -> None:
        """Reduce the optimizers' state into one block per optimizer (once a step)."""
        if not self.due:
            return
        self.due = False  # once a step, after the last optimizer stepped
        for opt in self.adams:
            try:
                got = adam_block(opt, self.ctx.params)
            except Exception as exc:  # noqa: BLE001 - never take training down
                self.ctx.warn("update_rms and eps_frac", exc)
                continue
            if got is not None:
                block, pids = got
                self.ctx.emit(self.step, "adam", pids, block)
