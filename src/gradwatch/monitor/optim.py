"""What runs around ``optimizer.step()``: step hooks, closures and the GradScaler wrapper.

With ``optimizer=``, a step is closed by the optimizer: the first optimizer's step pre-hook
runs the step's gradient pass (or, when the optimizer is given a closure that runs backward
inside the step, its post-hook does) and tells the taps the optimizer is about to step; the
last optimizer's post-hook tells them it has stepped and closes the step. Wrapped around
``GradScaler.step`` (with ``scaler=``), the Monitor notes the scale the step's backward used
and sees a step GradScaler skipped (the optimizer was not called): that step is closed as
skipped, and the taps record no gradient statistics for it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from gradwatch.errors import GradwatchTypeError, GradwatchValueError
from gradwatch.monitor.hookkit import disown, own


def check_optimizers(optimizer: Any, model: torch.nn.Module) -> list[torch.optim.Optimizer]:
    """The optimizers as a list.

    Raises:
        GradwatchTypeError: an item is not a torch optimizer.
        GradwatchValueError: they hold none of ``model``'s parameters: their steps would
            never touch the model, so nothing it does would be recorded.
    """
    if optimizer is None:
        return []
    opts = list(optimizer) if isinstance(optimizer, list | tuple) else [optimizer]
    for o in opts:
        if not isinstance(o, torch.optim.Optimizer):
            raise GradwatchTypeError(
                f"optimizer must be a torch.optim.Optimizer (or a list of them), "
                f"got {type(o).__name__}"
            )
    held = {id(p) for o in opts for group in o.param_groups for p in group["params"]}
    if opts and not any(id(p) in held for p in model.parameters()):
        raise GradwatchValueError(
            f"optimizer holds none of the model's parameters ({len(held)} others), so its "
            "steps would train something else and the watched model would record nothing; "
            "pass the optimizer built from this model, e.g. "
            "torch.optim.SGD(model.parameters(), lr=0.1)"
        )
    return opts


class OptimizerHooks:
    """The optimizers' step hooks and the GradScaler wrapper of one Monitor's tap loop."""

    def __init__(self, loop: Any):
        self.loop = loop
        self.ctx = loop.ctx
        self.pre_done = False  # the step's first optimizer has started stepping
        self.grads_after_step = False  # a closure: the gradients exist after the step
        self.handles: list[Any] = []
        for opt in self.ctx.optimizers:
            self.handles.append(own(opt.register_step_pre_hook(self.on_pre)))
            self.handles.append(own(opt.register_step_post_hook(self.on_post)))
        self.scaler = self.ctx.scaler
        if self.scaler is not None:
            self.scaler.step = self._wrap_scaler_step(type(self.scaler).step.__get__(self.scaler))

    def on_pre(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        """Step pre-hook: the gradient pass (unless a closure runs backward), then the taps."""
        if self.pre_done:
            return  # several optimizers: the first one to step takes the gradient statistics
        self.pre_done = True
        if not self.ctx.plan.recorded:
            return
        # the hook sees (optimizer, *args): a closure is the callable among them
        closure = kwargs.get("closure") if kwargs else None
        if closure is None:
            closure = next((a for a in args if callable(a)), None)
        if callable(closure):
            # optimizer.step(closure) runs backward inside the step: this step's gradients
            # exist only after it (a weight snapshot now is right: the closure does not
            # change weights)
            self.grads_after_step = True
        else:
            self.loop.gradient_pass()
        self.loop.dispatch("before_optimizer_step")

    def on_post(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        """Step post-hook of the last optimizer: the taps, then the step closes."""
        if optimizer is not self.ctx.optimizers[-1]:
            return  # the step closes when the last listed optimizer has stepped
        if self.grads_after_step:
            self.grads_after_step = False
            self.loop.gradient_pass()
        if self.ctx.plan.recorded:
            self.loop.dispatch("after_optimizer_step")
        self.loop.close_step()

    def take_gradients(self) -> None:
        """The gradient pass now (``Monitor.take_gradients``)."""
        self.grads_after_step = False
        if not self.pre_done:
            self.on_pre(self.ctx.optimizers[0], (), {})
        elif self.ctx.plan.recorded:
            self.loop.gradient_pass()

    def _wrap_scaler_step(self, orig: Callable) -> Callable:
        def step(optimizer: torch.optim.Optimizer, *args: Any, **kwargs: Any) -> Any:
            loop, ctx = self.loop, self.ctx
            before = loop.step
            last = optimizer is ctx.optimizers[-1]
            if last and ctx.plan.recorded and "scaler" in ctx.sources:
                ctx.scale_used = self._current_scale()
            out = orig(optimizer, *args, **kwargs)
            if loop.step == before and last:
                # GradScaler skipped optimizer.step() (Inf/NaN in the scaled gradients): the
                # step is recorded (loss, skipped = 1, the scale) without its gradient
                # statistics, since the overflow is the scaler's routine, not the model's
                self.pre_done = True
                ctx.skipped = True
                loop.close_step()
            return out

        return step

    def _current_scale(self) -> torch.Tensor:
        """The scale this step's backward used, as a (1,) float32 device tensor.

        A copy: ``scaler.update()`` changes the scale in place afterwards.
        """
        s = self.scaler
        scale = getattr(s, "_scale", None) if s.is_enabled() else None
        if scale is None:
            return self.ctx.flags(self.ctx.params[0].device)[1]
        return scale.detach().to(torch.float32).reshape(1).clone()

    def remove(self) -> None:
        """Remove the step hooks; GradScaler's ``step`` is the class's method again."""
        disown(self.handles)
        for h in self.handles:
            h.remove()
        self.handles.clear()
        if self.scaler is not None:
            try:
                del self.scaler.step  # back to the class's method
            except AttributeError:
                pass
            self.scaler = None
