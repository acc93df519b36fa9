"""Optimizer step hooks, GradScaler wiring, closures and the gradient/update blocks."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from gradwatch.errors import GradwatchTypeError, GradwatchValueError
from gradwatch.monitor.hookkit import own
from gradwatch.monitor.listeners import add_clip_listener
from gradwatch.stats.gradient import NormPlan, grad_block
from gradwatch.stats.numeric import dense_real
from gradwatch.stats.update import Snapshot


class _General(Exception):
    """Internal signal: take the general gradient path."""


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


class OptimHooks:
    """Mixin of :class:`~gradwatch.monitor.Monitor`: what runs around ``optimizer.step()``."""

    def _init_optim_hooks(self) -> None:
        """Per-step optimizer state; step hooks, GradScaler wiring, the clipping listener."""
        self._snapshot: Snapshot | None = None
        self._manual_snapshot_step: int | None = None
        self._pre_done = False
        self._grads_after_step = False
        self._snap_fresh = False
        self._grad_blk: tuple[torch.Tensor, Any, tuple[int, ...]] | None = None
        self._grad_general = False  # some gradient needs the general path (dtype, layout)
        self._clip: Any = None  # the last ClipResult of gradwatch's clipping on this model
        self._scale_used: torch.Tensor | None = None  # GradScaler's scale for this step
        self._skipped = False  # GradScaler skipped this step's optimizer.step()
        self._origin: tuple[tuple, torch.Tensor] | None = None  # NaN-origin counts
        self._losses: list[torch.Tensor] = []
        self._param_ids = {id(p) for p in self._params}
        if "clip" in self._need:
            self._clip_ref = add_clip_listener(self._on_clip)
        for opt in self._optimizers:
            self._handles.append(own(opt.register_step_pre_hook(self._on_opt_pre)))
            self._handles.append(own(opt.register_step_post_hook(self._on_opt_post)))
        self._scaler_patched = False
        if self._scaler is not None:
            scaler = self._scaler
            scaler.step = self._wrap_scaler_step(type(scaler).step.__get__(scaler))
            self._scaler_patched = True

    def _on_clip(self, result: Any, params: list[torch.Tensor]) -> None:
        # gradwatch's clipping ran: keep its tensors if it clipped this model's gradients
        if self._rec and params and id(params[0]) in self._param_ids:
            self._clip = result

    def _on_opt_pre(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        if self._pre_done:
            return  # several optimizers: the first one to step takes the gradient statistics
        self._pre_done = True
        if not self._rec:
            return
        # the hook sees (optimizer, *args): a closure is the callable among them
        closure = kwargs.get("closure") if kwargs else None
        if closure is None:
            closure = next((a for a in args if callable(a)), None)
        if callable(closure):
            # optimizer.step(closure) runs backward inside the step: this step's gradients
            # exist only after it (the weight snapshot below is right: the closure does not
            # change weights)
            self._grads_after_step = True
        else:
            self._take_grad_stats()
        if self._detail and "update" in self._need:
            try:
                self._take_snapshot()
                self._snap_fresh = True
            except Exception as exc:  # noqa: BLE001 - quantized, meta or mixed-device weights
                self._warn_skip("weight_norm and update_ratio", exc)

    def _take_snapshot(self) -> None:
        """Copy the parameters into the preallocated snapshot (stacked groups, fused copies)."""
        params, snap = self._params, self._snapshot
        if snap is None or not snap.fits(params):
            # allocated once, and again only if the model moved to another dtype/device
            snap = self._snapshot = Snapshot(params, self._param_plan())
        snap.take(params)

    def _on_opt_post(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        if optimizer is not self._optimizers[-1]:
            return  # the step closes when the last listed optimizer has stepped
        if self._grads_after_step:
            self._grads_after_step = False
            self._take_grad_stats()
        self._close_step()

    def take_gradients(self) -> None:
        """Take the pending step's gradient statistics from the gradients as they are now.

        For training frameworks that change gradients between backward and
        ``optimizer.step()`` (clipping, for one): call it at the point where the gradients
        are complete (after accumulation and AMP unscaling, before clipping); the optimizer
        step then records the step without taking them again. Also takes the weight snapshot
        for ``update_ratio``.
        """
        self._ensure_open()
        if not self._optimizers:
            raise GradwatchValueError(
                "take_gradients() needs a Monitor made with optimizer=; without one, "
                "step() takes the gradients"
            )
        self._grads_after_step = False
        if not self._pre_done:
            self._on_opt_pre(self._optimizers[0], (), {})
        elif self._rec:
            self._take_grad_stats()

    def _wrap_scaler_step(self, orig: Callable) -> Callable:
        def step(optimizer: torch.optim.Optimizer, *args: Any, **kwargs: Any) -> Any:
            before = self._step
            last = optimizer is self._optimizers[-1]
            if last and self._rec and "scaler" in self._need:
                self._scale_used = self._current_scale()
            out = orig(optimizer, *args, **kwargs)
            if self._step == before and last:
                # GradScaler skipped optimizer.step() (Inf/NaN in the scaled gradients): the
                # step is recorded (loss, skipped = 1, the scale) without its gradient
                # statistics, since the overflow is the scaler's routine, not the model's
                self._pre_done = True
                self._skipped = True
                self._close_step()
            return out

        return step

    def _current_scale(self) -> torch.Tensor:
        """The scale this step's backward used, as a (1,) float32 device tensor.

        A copy: ``scaler.update()`` changes the scale in place afterwards.
        """
        s = self._scaler
        scale = getattr(s, "_scale", None) if s.is_enabled() else None
        if scale is None:
            return self._flags(self._params[0].device)[1]
        return scale.detach().to(torch.float32).reshape(1).clone()

    def _take_grad_stats(self) -> None:
        """Gradient block from the current ``.grad`` of every watched parameter."""
        if "grad" not in self._need:
            return
        params = self._params
        grads = [p.grad for p in params]
        plan = None
        if any(g is None for g in grads):
            pids = tuple(i for i, g in enumerate(grads) if g is not None)
            grads = [grads[i] for i in pids]
        else:
            pids = self._all_pids
        if not grads:
            self._grad_blk = None
            return
        try:
            if self._grad_general:
                raise _General
            g0 = grads[0]
            if g0.device.type == "meta":
                raise _General  # no values to reduce: the general path skips them
            one_device = None
            if pids is self._all_pids:
                plan = self._plan
                if plan is None or plan.device != g0.device or plan.dtype != g0.dtype:
                    plan = self._plan = NormPlan(grads)
                one_device = plan.one_device  # as when the plan was made (a move remakes it)
            if one_device is None:
                one_device = len({g.device for g in grads}) == 1
            if one_device:
                block, has_counts = grad_block(grads, self._grad_max, plan)
            else:  # parameters on several devices: one block per device, moved to the first
                block, has_counts = _multi_device_grad_block(grads, self._grad_max)
        except Exception:  # noqa: BLE001 - sparse, complex, quantized or meta gradients
            self._grad_general = True
            got = self._general_grad_block(grads, pids)
            if got is None:
                self._grad_blk = None
                return
            block, has_counts, pids = got
        self._grad_blk = (block, (has_counts, self._grad_max), pids)
        if has_counts and block.device.type == "cpu" and self._origin is None:
            self._trace_origin()  # a non-finite step (CPU: known without a device sync)

    def _general_grad_block(self, grads: list[torch.Tensor], pids: tuple[int, ...]):
        """Gradient block for gradients the fused path cannot take; skips what has no values.

        Complex gradients count by modulus (‖z‖₂ = ‖|z|‖₂), sparse ones by their stored
        values, quantized ones dequantized; ``meta`` tensors are skipped with one warning.
        """
        keep, dense = [], []
        for pid, g in zip(pids, grads, strict=True):
            d = dense_real(g.detach())
            if d is None:
                self._warn_skip(f"gradient statistics of {g.layout}/{g.device.type} gradients")
                continue
            keep.append(pid)
            dense.append(d)
        if not dense:
            return None
        try:
            if len({d.device for d in dense}) == 1:
                block, has_counts = grad_block(dense, self._grad_max)
            else:
                block, has_counts = _multi_device_grad_block(dense, self._grad_max)
        except Exception as exc:  # noqa: BLE001 - never take training down
            self._warn_skip("gradient statistics", exc)
            return None
        return block, has_counts, tuple(keep)

    def _param_plan(self) -> NormPlan:
        plan = getattr(self, "_wplan", None)
        p0 = self._params[0]
        if plan is None or plan.device != p0.device or plan.dtype != p0.dtype:
            plan = self._wplan = NormPlan(self._params)
        return plan

    def _unscale(self) -> torch.Tensor | float:
        s = self._scaler
        if s is not None and s.is_enabled() and getattr(s, "_scale", None) is not None:
            return s._scale.to(torch.float32).reciprocal()
        return 1.0


def _multi_device_grad_block(
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
