"""The output-logit tap: ``logit_max`` and ``logsumexp_mean`` of the model's output (layer "").

At detail steps, when the model's forward pass returns, its logits (the output tensor, a
Hugging Face output's ``.logits``, or a tuple's first tensor) are reduced at once
(:func:`gradwatch.stats.logits.logit_row`: the largest logit, the sum of log Z over the
positions and their number), so no reference to them outlives the forward pass. The class
dimension is the last one of an (N, C) output or of a library output's ``.logits``. For a
plain tensor of 3 dimensions or more ((B, T, C) for a language model, (B, C, T) as
``F.cross_entropy`` also takes), it is learnt once, from the loss's gradient at the first
detail step: a softmax cross-entropy's gradient sums to zero over the classes at every
position. The logits are kept until that gradient arrives, that one time; a loss of another
kind leaves the last dimension. A plain (N, C) output is tested the same way, once: an output
whose loss's gradient sums to zero along no dimension (a regression's mean squared error, say)
holds no logits, and the tap takes nothing from it from then on.
"""

from __future__ import annotations

from typing import Any

import torch

from gradwatch.monitor.tap import Record, StepPlan, Tap, register_tap
from gradwatch.stats.logits import logit_row, merge_rows, output_logits

STATS = ("logit_max", "logsumexp_mean")
#: A dimension along which the loss's gradient sums to at most this fraction of its mass is
#: the class dimension (softmax cross-entropy: Σ_c ∂L/∂z_c = Σ_c (p_c - y_c) / N = 0).
ZERO_SUM = 1e-3


def class_dim_of_gradient(g: torch.Tensor) -> int | None:
    """The dimension (> 0) along which ``g`` sums to ~0, the smallest such; None if none.

    The gradient of a softmax cross-entropy with respect to its logits sums to zero over the
    classes at every position, whatever the labels.
    """
    mass = g.abs().sum()
    if not bool(mass > 0):
        return None
    for d in range(1, g.dim()):
        if bool(g.sum(d).abs().sum() <= ZERO_SUM * mass):
            return d - g.dim()  # negative: the same dimension for any batch shape
    return None


@register_tap
class LogitTap(Tap):
    """The largest output logit and the mean log-partition, at detail steps."""

    name = "logits"
    sources = ("logits",)

    def install(self) -> None:
        """Per-step rows; the class dimension of a plain >= 3-D output, once learnt."""
        self.active = self.needed
        self.due = False
        self.rows: list[torch.Tensor] = []
        self.dim: int | None = None  # the class dimension of a >= 3-D output, once known
        self.pending: torch.Tensor | None = None  # logits waiting for their gradient
        self.flat: bool | None = None  # a plain (N, C) output holds logits (None: not known)

    def begin_step(self, plan: StepPlan) -> None:
        """Due at detail steps (not under compile)."""
        self.rows = []
        self.pending = None
        self.due = self.needed and plan.any_due(STATS) and not self.ctx.compiled

    def _dim_of(self, out: Any, z: torch.Tensor) -> int | None:
        if not isinstance(out, torch.Tensor | tuple | list):
            return -1  # a library output whose .logits end in the classes
        if z.dim() <= 2:  # (N, C): logits if the loss's gradient says so (learnt once)
            return -1 if self.flat or (self.flat is None and not z.requires_grad) else None
        return self.dim

    def on_forward_done(self, args: Any, out: Any) -> None:
        """Reduce the output's logits at once (or once their class dimension is known)."""
        if not self.due or self.flat is False or not torch.is_grad_enabled() or self.ctx.replaying:
            return
        z = output_logits(out)
        if z is None or z.numel() == 0:
            return
        dim = self._dim_of(out, z)
        if dim is None:  # (B, C, T) or (B, T, C): the loss's gradient will tell
            if z.requires_grad and self.pending is None:
                self.pending = z
                z.register_hook(self._learn_dim)
            return
        self._reduce(z, dim)

    def _learn_dim(self, g: torch.Tensor) -> None:
        z, self.pending = self.pending, None
        if z is None:
            return
        try:
            found = class_dim_of_gradient(g.detach())
        except Exception:  # noqa: BLE001 - never take training down
            found = None
        if z.dim() <= 2:
            self.flat = found is not None
            if self.flat:
                self._reduce(z, -1)
            return
        self.dim = found if found is not None else -1
        self._reduce(z, self.dim)

    def _reduce(self, z: torch.Tensor, dim: int) -> None:
        try:
            row = logit_row(z, dim)
            if self.rows:  # micro-batches fold into one row: memory does not grow with them
                row = merge_rows([self.rows[0], row.to(self.rows[0].device)])
            self.rows = [row]
        except Exception as exc:  # noqa: BLE001 - never take training down
            self.ctx.warn("logit_max and logsumexp_mean", exc)

    def collect(self, rec: Record) -> None:
        """Emit the step's forward passes as one ``logits`` block."""
        self.pending = None
        if self.rows:
            rec.emit("logits", (), self.rows[0])
        self.rows = []
