"""The learning-rate tap: ``lr``, the rate each layer's optimizer step used (opt-in).

After a recorded optimizer step, the learning rate of every parameter group of the watched
optimizers, one block per step; the key maps each layer to the groups that hold its
parameters (:mod:`gradwatch.stats.lr`). A step GradScaler skipped records none: the optimizer
did not step. The smallest complete tap: no module hooks, one event, one block.
"""

from __future__ import annotations

import torch

from gradwatch.monitor.tap import Record, StepPlan, Tap, register_tap

F32 = torch.float32


@register_tap
class LearningRateTap(Tap):
    """The learning rate of each layer's parameter groups, after the optimizer step."""

    name = "lr"
    sources = ("lr",)

    def install(self) -> None:
        """Nothing to hook: the optimizers' parameter groups are read after the step."""
        self.active = self.needed
        self.on = False
        self.rates: torch.Tensor | None = None
        self.key: tuple = ()
        self.shape: tuple[int, ...] = ()  # parameters per group when the key was made

    def begin_step(self, plan: StepPlan) -> None:
        """Whether ``lr`` is due at this step."""
        self.on = self.needed and plan.due("lr")
        self.rates = None

    def after_optimizer_step(self) -> None:
        """Read the learning rate of every parameter group."""
        if not self.on:
            return
        groups = [g for opt in self.ctx.optimizers for g in opt.param_groups]
        shape = tuple(len(g["params"]) for g in groups)
        if shape != self.shape:  # first step, or add_param_group since: map layers again
            self.key, self.shape = self._layer_groups(groups), shape
        rates = [g["lr"] for g in groups]
        dev = next((r.device for r in rates if isinstance(r, torch.Tensor)), None)
        if dev is None:
            self.rates = torch.tensor(rates, dtype=F32)
        else:  # tensor learning rates (capturable optimizers) stay on their device
            self.rates = torch.stack([torch.as_tensor(r, dtype=F32, device=dev).reshape(())
                                      for r in rates])

    def _layer_groups(self, groups: list[dict]) -> tuple:
        """((layer, indices of the groups holding its parameters), ...)."""
        group_of = {id(p): gi for gi, g in enumerate(groups) for p in g["params"]}
        params = self.ctx.params
        key = []
        for li, pids in self.ctx.layout.layer_params.items():
            held = sorted({group_of[id(params[i])] for i in pids if id(params[i]) in group_of})
            if held:
                key.append((li, tuple(held)))
        return tuple(key)

    def collect(self, rec: Record) -> None:
        """The rates as one ``lr`` block."""
        if self.rates is not None and self.key:
            rec.emit("lr", self.key, self.rates)
