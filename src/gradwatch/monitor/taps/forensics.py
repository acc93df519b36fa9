"""The NaN-forensics tap: on a non-finite step, where did the first NaN or Inf appear?

Costs nothing on healthy steps: the root forward pre-hook keeps a reference (never a copy) to
the step's inputs. When a step turns out non-finite — its gradients (known on CPU from the
gradient block without a device sync) or, in manual mode, its loss — and before the optimizer
changes the weights, :class:`ForensicsTap` counts NaN/Inf entries in the inputs and
in each layer's parameters, then replays the forward pass under ``torch.no_grad`` with those
weights and counts NaN/Inf entries in each layer's first output (see
:mod:`gradwatch.stats.origin`). The replay leaves the model as it found it: buffers (BatchNorm
running statistics) are restored and the random number generators forked, so dropout in the
replay does not shift the training's random stream.

A NaN that first appears in the backward pass leaves inputs, weights and forward outputs
finite; it is read from ``nonfinite`` and ``backprop_norm`` (the layer nearest the output whose
gradients are not finite). On accelerators the non-finite test would need a host sync every
step, so there the forensics run only where that is known without one (manual-mode CPU losses).
"""

from __future__ import annotations

from typing import Any

import torch

from gradwatch.monitor.hookkit import tensors_in
from gradwatch.monitor.tap import Record, StepPlan, Tap, register_tap
from gradwatch.stats.origin import count_nonfinite


@register_tap
class ForensicsTap(Tap):
    """Input, weight and forward NaN/Inf counts at a non-finite step (a replay)."""

    name = "origin"
    sources = ("origin",)

    def install(self) -> None:
        """Nothing is kept until a forward pass runs."""
        self.active = self.needed
        self.inputs: tuple[Any, Any] | None = None  # a reference to the step's last inputs
        self.origin: tuple[tuple, torch.Tensor] | None = None

    def begin_step(self, plan: StepPlan) -> None:
        """Forget the previous step's inputs and counts."""
        self.inputs = None
        self.origin = None

    def on_forward(self, args: Any, kwargs: Any) -> None:
        """Keep a reference to the inputs of a forward pass with gradients."""
        if self.needed and torch.is_grad_enabled() and not self.ctx.replaying:
            self.inputs = (args, kwargs)  # a reference, for the replay; never copied

    def on_nonfinite(self) -> None:
        """Record input/weight/forward NaN/Inf counts for the pending step (rare path)."""
        if not self.needed or self.inputs is None or self.ctx.replaying or self.origin:
            return
        try:
            self.origin = self._replay()
        except Exception as exc:  # noqa: BLE001 - forensics must never take training down
            self.ctx.warn("the origin of non-finite values", exc)

    def collect(self, rec: Record) -> None:
        """The counts of a non-finite step as one ``origin`` block."""
        if self.origin is not None:
            key, counts = self.origin
            rec.emit("origin", key, counts)

    def remove(self) -> None:
        """Drop the reference to the inputs."""
        self.inputs = None
        self.origin = None

    def _replay(self) -> tuple[tuple, torch.Tensor]:
        ctx = self.ctx
        args, kwargs = self.inputs
        params = ctx.params
        dev = params[0].device if params[0].device.type != "meta" else "cpu"
        keys: list[tuple[int, int]] = [(0, -1)]
        vals = [count_nonfinite(tensors_in((args, kwargs)), dev)]
        for li, ly in enumerate(ctx.layers):
            keys.append((1, li))
            vals.append(count_nonfinite(ly.parameters(), dev))
        outs: dict[int, torch.Tensor] = {}
        handles = []
        for li, ly in enumerate(ctx.layers):

            def hook(module: Any, a: Any, out: Any, li: int = li) -> None:
                first = next(iter(tensors_in(out)), None)
                if first is not None and li not in outs:
                    outs[li] = count_nonfinite([first], dev)

            handles.append(ly.module.register_forward_hook(hook, prepend=True))
        buffers = [(b, b.detach().clone()) for b in ctx.model.buffers()]
        cuda = sorted({p.device.index or 0 for p in params if p.device.type == "cuda"})
        ctx.replaying = True
        try:
            with torch.no_grad(), torch.random.fork_rng(devices=cuda):
                ctx.model(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - a model may raise on NaN; keep what ran
            ctx.warn("a complete forward replay for NaN forensics", exc)
        finally:
            ctx.replaying = False
            for h in handles:
                h.remove()
            with torch.no_grad():
                for b, saved in buffers:
                    b.copy_(saved)
        for li in sorted(outs):
            keys.append((2, li))
            vals.append(outs[li])
        return tuple(keys), torch.stack(vals)
