"""THE HOT PATH of the Monitor: per-layer and per-activation hooks, and the step record.

Three places run during training: ``_on_layer_forward`` / ``_on_backprop`` (per layer call),
``_on_act_forward`` (per activation call) and ``_record_step`` (once per recorded step). None
of them calls ``.item()`` or ``.cpu()`` on an accelerator or loops over parameters where a
fused ``torch._foreach_*`` call exists; each recorded step leaves a few small float32 tensors
on the device, and every ``flush_every`` steps they go to the background writer.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Iterable
from functools import partial
from typing import Any

import torch
from torch import nn

from gradwatch.errors import GradwatchTypeError, GradwatchValueError
from gradwatch.stats import norm32
from gradwatch.stats.activation import FAMILY_CODE, act_block
from gradwatch.stats.update import update_block, weight_block
from gradwatch.store.writer import Block


def _tensors(out: Any) -> Iterable[torch.Tensor]:
    """The tensors in a module output (tensor, or nested tuple/list/dict of them)."""
    if isinstance(out, torch.Tensor):
        yield out
    elif isinstance(out, tuple | list):
        for o in out:
            yield from _tensors(o)
    elif isinstance(out, dict):
        for o in out.values():
            yield from _tensors(o)


class HotPath:
    """Mixin of :class:`~gradwatch.monitor.Monitor`: schedule, hooks and the step record."""

    # ------------------------------------------------------------------------- schedule
    def _decide(self, step: int) -> None:
        """Decide whether step ``step`` is recorded, and whether in detail."""
        self._rec = bool(self._schedule(step))
        self._detail = self._rec and (self._n_recorded % self.detail_every == 0)
        self._rec_act = (
            self._rec
            and "act" in self._need
            and (self._detail or not ({"act_mean", "act_std"} & self._detail_stats))
        )
        self._grad_max = "grad_max_abs" in self.stats and (
            self._detail or "grad_max_abs" not in self._detail_stats
        )

    def _sync_hooks(self) -> None:
        """Install or remove the per-layer and per-activation hooks for the pending step."""
        want_layers = self._rec and bool({"backprop", "act"} & self._need)
        if want_layers and not self._layer_handles:
            self._layer_handles = [
                ly.module.register_forward_hook(partial(self._on_layer_forward, li))
                for li, ly in enumerate(self.layers)
            ]
        elif not want_layers and self._layer_handles:
            for h in self._layer_handles:
                h.remove()
            self._layer_handles = []
        if self._rec_act and not self._act_handles:
            self._act_handles = [
                module.register_forward_hook(partial(self._on_act_forward, ai, fam))
                for ai, (_, module, fam) in enumerate(self._acts_info)
            ]
        elif not self._rec_act and self._act_handles:
            for h in self._act_handles:
                h.remove()
            self._act_handles = []

    # -------------------------------------------------------------------- HOT PATH: hooks
    def _on_root_forward(self, module: nn.Module, args: Any) -> None:
        if torch.is_grad_enabled():
            self._forward_seen = True
            self._last_layer = -1

    def _on_layer_forward(self, li: int, module: nn.Module, args: Any, out: Any) -> None:
        if torch.compiler.is_compiling():
            # Under torch.compile the hooks do nothing (no graph break): the back-propagated
            # signal and activation statistics are not recorded; gradient, update and loss
            # statistics (taken outside the compiled region) are. close() says so once.
            self._compiled = True
            return
        self._last_layer = li
        if not self._rec or not torch.is_grad_enabled():
            return
        if not self._order_done and li not in self._exec_order:
            self._exec_order.append(li)
        if "backprop" in self._need:
            if type(out) is torch.Tensor:
                if out.requires_grad:
                    fn = out.grad_fn
                    if fn is not None:
                        fn.register_prehook(partial(self._on_backprop, li))
                    else:
                        out.register_hook(partial(self._on_backprop_tensor, li))
            else:
                seen: set[int] = set()
                for t in _tensors(out):
                    if t.requires_grad:
                        fn = t.grad_fn
                        if fn is None:
                            t.register_hook(partial(self._on_backprop_tensor, li))
                        elif id(fn) not in seen:
                            seen.add(id(fn))
                            fn.register_prehook(partial(self._on_backprop, li))

    def _on_backprop(self, li: int, grad_outputs: tuple[torch.Tensor | None, ...]) -> None:
        # pre-hook of the autograd node that produced the layer's output: its incoming
        # gradients are d loss / d output (all outputs of that node).
        if len(grad_outputs) == 1:
            g = grad_outputs[0]
            if g is None:
                return
            norm = norm32(g)
        else:
            gs = [g for g in grad_outputs if g is not None]
            if not gs:
                return
            norm = torch.linalg.vector_norm(torch.stack([norm32(g) for g in gs]))
        self._bp_layers.append(li)
        self._bp_norms.append(norm)

    def _on_backprop_tensor(self, li: int, grad: torch.Tensor) -> None:
        self._bp_layers.append(li)
        self._bp_norms.append(norm32(grad))

    def _on_act_forward(self, ai: int, fam: str, module: nn.Module, args: Any, out: Any) -> None:
        if torch.compiler.is_compiling():
            self._compiled = True
            return
        if self._rec_act and self._last_layer >= 0 and torch.is_grad_enabled():
            if type(out) is torch.Tensor and out.numel() > 0:
                self._acts.append((self._last_layer, ai, out.detach()))

    def _record_step(self) -> None:
        """Turn what the hooks kept for the pending step into blocks (HOT PATH, once a step)."""
        step = self._step
        buf = self._buffer
        if self._grad_blk is not None:
            block, flags, pids = self._grad_blk
            buf.append(Block(step, "grad", (pids, *flags), block))
        if self._bp_norms:
            norms = torch.stack(self._bp_norms)
            inv = self._unscale()
            if not isinstance(inv, float):
                norms = norms * inv.to(norms.device)
            buf.append(Block(step, "bp", tuple(self._bp_layers), norms))
        if self._acts:
            acts = [a for _, _, a in self._acts]
            fams = [self._acts_info[ai][2] for _, ai, _ in self._acts]
            if len({a.device for a in acts}) == 1:
                sat_dead = self._detail and bool({"saturated_frac", "dead_frac"} & set(self.stats))
                blk = act_block(acts, fams, detail=sat_dead)
                key = tuple(
                    (li, FAMILY_CODE[fams[k]], a.numel(), a[0].numel() if a.dim() >= 2 else 1)
                    for k, ((li, _, _), a) in enumerate(zip(self._acts, acts, strict=True))
                )
                buf.append(Block(step, "act", key, blk))
        if self._losses:
            loss = torch.stack(self._losses).mean().reshape(1).to(torch.float32)
            buf.append(Block(step, "loss", (), loss))
        if self._clip is not None:
            norm, coef = self._clip
            dev = norm.device
            buf.append(Block(step, "clip", (), torch.stack([norm.float(), coef.float().to(dev)])))
        if self._detail and "update" in self._need and not self._optimizers:
            # no optimizer: weights now; the update is measured at the next step() call
            with torch.no_grad():
                wblk = weight_block(self._params, self._param_plan())
            buf.append(Block(step, "weight", self._all_pids, wblk))
            self._take_snapshot()
            self._manual_snapshot_step = step
        self._n_recorded += 1

    def _close_step(self) -> None:
        """Close the pending step: record it if scheduled, reset, maybe flush."""
        if self._compiled and not self._compile_warned:
            self._compile_warned = True
            warnings.warn(
                "gradwatch: the model runs under torch.compile; to keep the compiled graph "
                "whole, backprop_norm and activation statistics are not recorded for it "
                "(gradient, weight, update and loss statistics are). Watch the uncompiled "
                "model for the full set.",
                RuntimeWarning,
                stacklevel=3,
            )
        if self._rec:
            if self._snap_fresh:
                self._snap_fresh = False
                with torch.no_grad():
                    buf = update_block(self._snapshot, self._params, self._param_plan())
                self._buffer.append(Block(self._step, "update", self._all_pids, buf))
            self._record_step()
            if self._exec_order:
                self._order_done = True
        self._bp_layers = []
        self._bp_norms = []
        self._acts = []
        self._losses = []
        self._clip = None
        self._grad_blk = None
        self._pre_done = False
        self._forward_seen = False
        self._step += 1
        self._decide(self._step)
        self._sync_hooks()
        if len(self._buffer) and (
            self._n_recorded % self.flush_every == 0
            or time.monotonic() - self._last_flush > self.flush_secs
        ):
            self.flush(wait=False)

    def step(self, loss: torch.Tensor | float | None = None) -> None:
        """Mark the end of a training step (or, with ``optimizer=``, pass the loss).

        Without ``optimizer=``: call it after ``loss.backward()`` (and before
        ``optimizer.step()``, so that the update ratio covers the right step); it records
        the pending step. With ``optimizer=``, steps close on ``optimizer.step()`` and this
        only attaches the loss: to the step just closed if no forward pass has run since,
        otherwise to the pending step.

        Args:
            loss: the training loss (a tensor is kept on its device; no host sync).
        """
        self._ensure_open()
        if loss is not None:
            if isinstance(loss, torch.Tensor):
                if loss.numel() != 1:
                    raise GradwatchValueError(
                        f"loss must be a scalar, got a tensor of shape {tuple(loss.shape)}; "
                        "pass loss.mean() or the value you call backward() on"
                    )
                val = loss.detach().reshape(())
            elif isinstance(loss, int | float) and not isinstance(loss, bool):
                val = torch.tensor(float(loss))
            else:
                raise GradwatchTypeError(
                    f"loss must be a tensor or a number, got {type(loss).__name__}"
                )
        if self._optimizers:
            if loss is not None:
                if not self._forward_seen and self._step > 0:
                    prev = self._step - 1  # the step that optimizer.step() just closed
                    if self._schedule(prev) and self._late_loss_step != prev:
                        self._late_loss_step = prev  # one loss per step
                        self._buffer.append(
                            Block(prev, "loss", (), val.to(torch.float32).reshape(1))
                        )
                elif self._rec:
                    self._losses.append(val)
            return
        # manual mode
        if loss is not None and self._rec:
            self._losses.append(val)
        if self._manual_snapshot_step is not None and self._snapshot is not None:
            with torch.no_grad():
                blk = update_block(self._snapshot, self._params, self._param_plan())
            self._buffer.append(Block(self._manual_snapshot_step, "update", self._all_pids, blk))
            self._manual_snapshot_step = None
        if self._rec:
            self._take_grad_stats()
        self._close_step()
