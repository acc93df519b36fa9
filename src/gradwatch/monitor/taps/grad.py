"""The parameter-gradient tap: ``grad_norm``, ``grad_rms``, ``nonfinite``, ``grad_max_abs``.

It reads the step's gradient pass (:class:`~gradwatch.monitor.gradpass.GradPass`) once per
recorded step: one fused reduction per shape group through a
:class:`~gradwatch.stats.gradient.NormPlan` built once, when gradients first exist (and again
if the model moves to another device or dtype). Gradients the fused path cannot take (sparse,
complex, quantized, ``meta``) take a general path from then on; parameters on several devices
give one block per device, moved to the first. Its results stay on the pass for the taps that
follow (``gp.norms``, ``gp.max_abs``, ``gp.counts``). On CPU a non-finite step is known from
the total norm without a sync (``gp.nonfinite``), which starts the NaN forensics.
"""

from __future__ import annotations

import math

import torch

from gradwatch.monitor.gradpass import GradPass
from gradwatch.monitor.tap import Record, StepPlan, Tap, register_tap
from gradwatch.stats import native
from gradwatch.stats.gradient import NormPlan, grad_block
from gradwatch.stats.numeric import dense_real


class _General(Exception):
    """Internal signal: take the general gradient path."""


@register_tap
class GradTap(Tap):
    """Parameter-gradient statistics from the step's gradient pass."""

    name = "grad"
    sources = ("grad",)

    def install(self) -> None:
        """The norm plan is built at the first gradient pass."""
        self.active = self.needed
        self.plan: NormPlan | None = None  # built lazily, once gradients exist
        self.general = False  # some gradient needs the general path (dtype, layout)
        self.block: tuple[torch.Tensor, tuple[bool, bool], tuple[int, ...]] | None = None
        self.with_max = False
        self.native = True  # the compiled pass takes these gradients (until it refuses one)
        self.reader = None  # the compiled reader of every parameter's gradient (made once)

    def begin_step(self, plan: StepPlan) -> None:
        """Whether max |g| is taken at this step (asked of the gradient pass)."""
        self.block = None
        self.with_max = plan.due("grad_max_abs")
        if self.with_max:
            plan.requests.add("grad_max")

    def on_gradients(self, gp: GradPass) -> None:
        """The gradient block, and its parts on the pass for the taps that follow."""
        self.block = None
        if self.ctx.sharded or not (self.needed or "grad_norms" in self.ctx.plan.requests):
            return  # sharded parameters: the shard tap takes them
        with_max = gp.with_max
        block = self._native_all(gp, with_max)
        if block is not None:  # every gradient, read by the compiled pass itself
            self._keep(gp, gp.pids, block, False, with_max)
            return
        grads, pids = gp.grads, gp.pids
        if not grads:
            return
        block = self._native_block(grads, with_max)
        if block is not None:
            self._keep(gp, pids, block, False, with_max)
            return
        try:
            if self.general:
                raise _General
            g0 = grads[0]
            if g0.device.type == "meta":
                raise _General  # no values to reduce: the general path skips them
            plan = None
            one_device = None
            if gp.complete:
                plan = self.plan
                if plan is None or plan.device != g0.device or plan.dtype != g0.dtype:
                    plan = self.plan = NormPlan(grads)
                one_device = plan.one_device  # as when the plan was made (a move remakes it)
            if one_device is None:
                one_device = len({g.device for g in grads}) == 1
            if one_device:
                block, has_counts = grad_block(grads, with_max, plan)
            else:  # parameters on several devices: one block per device, moved to the first
                block, has_counts = multi_device_grad_block(grads, with_max)
        except Exception:  # noqa: BLE001 - sparse, complex, quantized or meta gradients
            self.general = True
            got = self._general_block(grads, pids, with_max)
            if got is None:
                return
            block, has_counts, pids = got
        self._keep(gp, pids, block, has_counts, with_max)

    def _native_all(self, gp: GradPass, with_max: bool) -> torch.Tensor | None:
        """The block of every parameter's gradient by one compiled call that reads them.

        None when a parameter has no gradient, when one is non-finite (the torch path counts
        them) or when the kernels refuse them: the caller then lists the gradients.
        """
        nat = native.get() if self.native and not self.general else None
        if nat is None or not hasattr(nat, "ParamGrads"):
            return None
        reader = self.reader
        if reader is None or type(reader) is not nat.ParamGrads:
            reader = self.reader = nat.ParamGrads(self.ctx.params)
        try:
            got = reader.sumsq_max(with_max)
        except (RuntimeError, TypeError):  # not dense floating CPU tensors: the torch path
            self.native = False
            return None
        if got is None or not math.isfinite(got[1]):
            return None
        gp.every_one()
        return got[0]

    def _native_block(self, grads: list[torch.Tensor], with_max: bool) -> torch.Tensor | None:
        """Norms (and max |g|) in one compiled pass, when every entry is finite; else None.

        A non-finite step takes the torch path, which also counts the NaN/Inf entries (and
        redoes in float64 a finite norm whose float32 square overflowed).
        """
        nat = native.get() if self.native and not self.general else None
        if nat is None:
            return None
        try:
            out, total = nat.sumsq_max(grads, with_max)
        except (RuntimeError, TypeError):  # not dense floating CPU tensors: the torch path
            self.native = False
            return None
        return out if math.isfinite(total) else None

    def _keep(self, gp: GradPass, pids: tuple[int, ...], block: torch.Tensor, has_counts: bool,
              with_max: bool) -> None:
        # the block's own max part follows the statistic's schedule; the pass's, the requests
        self.block = (block, (has_counts, with_max), pids)
        if pids is gp.pids:
            gp.keep(block, with_max, has_counts)
        if has_counts and block.device.type == "cpu":
            gp.nonfinite = True  # a non-finite step (CPU: known without a device sync)

    def _general_block(self, grads: list[torch.Tensor], pids: tuple[int, ...], with_max: bool):
        """Gradient block for gradients the fused path cannot take; skips what has no values.

        Complex gradients count by modulus (‖z‖₂ = ‖|z|‖₂), sparse ones by their stored
        values, quantized ones dequantized; ``meta`` tensors are skipped with one warning.
        """
        keep, dense = [], []
        for pid, g in zip(pids, grads, strict=True):
            d = dense_real(g.detach())
            if d is None:
                self.ctx.warn(f"gradient statistics of {g.layout}/{g.device.type} gradients")
                continue
            keep.append(pid)
            dense.append(d)
        if not dense:
            return None
        try:
            if len({d.device for d in dense}) == 1:
                block, has_counts = grad_block(dense, with_max)
            else:
                block, has_counts = multi_device_grad_block(dense, with_max)
        except Exception as exc:  # noqa: BLE001 - never take training down
            self.ctx.warn("gradient statistics", exc)
            return None
        return block, has_counts, tuple(keep)

    def collect(self, rec: Record) -> None:
        """The gradient block (none at a step GradScaler skipped)."""
        if self.block is not None and not rec.skipped and self.needed:
            block, flags, pids = self.block
            if flags[1] and not self.with_max:  # max |g| taken for another tap only
                n = len(pids)
                block = torch.cat([block[:n], block[2 * n:]]) if flags[0] else block[:n]
                flags = (flags[0], False)
            rec.emit("grad", (pids, *flags), block)

    def remove(self) -> None:
        """Drop the step's block and the gradient reader."""
        self.block = self.reader = None


def multi_device_grad_block(
    grads: list[torch.Tensor], with_max: bool
) -> tuple[torch.Tensor, bool]:
    """Gradient block when parameters live on several devices (model parallel)."""
    dev0 = grads[0].device
    by_dev: dict[torch.device, list[int]] = {}
    for i, g in enumerate(grads):
        by_dev.setdefault(g.device, []).append(i)
    p = len(grads)
    k = 2 if with_max else 1
    out = torch.zeros(k + 1, p, device=dev0)
    any_counts = False
    for idx in by_dev.values():
        blk, has = grad_block([grads[i] for i in idx], with_max)
        n = len(idx)
        blk = blk.to(dev0).view(-1, n)
        sel = torch.tensor(idx, device=dev0)
        out[:k, sel] = blk[:k]
        if has:
            out[k, sel] = blk[k]
            any_counts = True
    return (out.reshape(-1) if any_counts else out[:k].reshape(-1)), any_counts

