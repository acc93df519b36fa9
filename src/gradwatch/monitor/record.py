"""Closing a step: what the hooks left in their buffers becomes blocks for the writer.

Once per step (HOT PATH, but once a step, not per layer): the rows the step's hooks wrote are
gathered with one ``index_select`` per buffer, the gradient block and the run-level scalars
are appended, and every ``flush_every`` recorded steps (or ``flush_secs`` seconds) the
blocks go to the background writer. No value is read on the host.
"""

from __future__ import annotations

import time
import warnings

import torch

from gradwatch.errors import GradwatchTypeError, GradwatchValueError
from gradwatch.monitor.meta import describe_structure
from gradwatch.stats.update import weight_block
from gradwatch.store.writer import Block

F32 = torch.float32


class StepRecord:
    """Mixin of :class:`~gradwatch.monitor.Monitor`: record, close and reset a step."""

    _compile_warned = False
    _flush_due = False  # a flush waits for the loss of the step optimizer.step() closed

    def _rows(self, rb) -> tuple[list[int], torch.Tensor] | None:
        """The rows a :class:`~gradwatch.monitor.hooks.RowBuffer` got this step, and values."""
        if not rb.called or rb.buf is None:
            return None
        called = rb.called
        idx = self._index(called, rb.buf.device)
        return called, rb.buf.index_select(0, idx)

    def _index(self, rows: list[int], device: torch.device) -> torch.Tensor:
        # the same rows come back step after step: keep their index tensor
        key = (tuple(rows), device)
        idx = self._idx_cache.get(key)
        if idx is None:
            if len(self._idx_cache) > 64:
                self._idx_cache.clear()
            idx = self._idx_cache[key] = torch.tensor(rows, dtype=torch.long, device=device)
        return idx


    def _record_step(self) -> None:
        """Turn what the hooks kept for the pending step into blocks (once a step)."""
        step = self._step
        buf = self._buffer
        skipped = self._skipped
        if self._act_pend:
            self.reduce_activations()  # a submodule ran without the model's own forward
        if self._grad_blk is not None and not skipped:
            block, flags, pids = self._grad_blk
            buf.append(Block(step, "grad", (pids, *flags), block))
        got = self._rows(self._bp)
        if got is not None and not skipped:
            layers, vals = got
            sq = vals[:, 0].square()
            for li, extra in self._bp.extra.items():
                j = layers.index(li)
                sq[j] = sq[j] + extra
            norms = sq.sqrt()
            inv = self._unscale()
            if not isinstance(inv, float):
                norms = norms * inv.to(norms.device)
            buf.append(Block(step, "bp", tuple(layers), norms))
        if self._time_vals and not skipped:
            vals = self._time_vals
            if len({t.device for t in vals}) > 1:
                vals = [t.cpu() for t in vals]
            norms = torch.cat(vals)
            inv = self._unscale()
            if not isinstance(inv, float):
                norms = norms * inv.to(norms.device)
            buf.append(Block(step, "time", tuple(self._time_rows), norms))
        got = self._rows(self._act)
        if got is not None:
            rows, vals = got
            vals[:, 1] = vals[:, 1].square()
            if not self._act_detail:
                vals[:, 2:] = float("nan")
            for row, extra in self._act.extra.items():
                j = rows.index(row)
                vals[j] = vals[j] + extra
            key = tuple((*self._act_meta[r], *self._act_n[r]) for r in rows)
            buf.append(Block(step, "act", key, vals.reshape(-1)))
        if self._losses:
            losses = self._losses
            if len({t.device for t in losses}) > 1:
                losses = [t.cpu() for t in losses]  # rare: floats and device tensors mixed
            loss = torch.stack(losses).to(F32).mean().reshape(1)
            buf.append(Block(step, "loss", (), loss))
        if self._clip is not None:
            norm, coef = self._clip
            dev = norm.device
            buf.append(Block(step, "clip", (), torch.stack([norm.float(), coef.float().to(dev)])))
        if self._scale_used is not None:
            flag = self._flags(self._scale_used.device)[int(skipped)]
            buf.append(Block(step, "scaler", (), torch.cat([flag, self._scale_used.reshape(1)])))
        if self._origin is not None:
            key, counts = self._origin
            buf.append(Block(step, "origin", key, counts))
        if self._detail and "update" in self._need and not self._optimizers:
            # no optimizer: weights now; the update is measured at the next step() call
            try:
                with torch.no_grad():
                    wblk = weight_block(self._params, self._param_plan())
                buf.append(Block(step, "weight", self._all_pids, wblk))
                self._take_snapshot()
                self._manual_snapshot_step = step
            except Exception as exc:  # noqa: BLE001 - quantized, meta or mixed-device weights
                self._warn_skip("weight_norm and update_ratio", exc)
        self._n_recorded += 1

    def _drop_meta(self, start: int) -> None:
        """Drop the step's blocks that live on the ``meta`` device (they hold no values)."""
        new = self._buffer[start:]
        if any(b.tensor.device.type == "meta" for b in new):
            self._warn_skip("statistics of tensors on the meta device")
            self._buffer[start:] = [b for b in new if b.tensor.device.type != "meta"]

    def _flags(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Constant (1,) tensors 0.0 and 1.0 on ``device``, made once (no copy per step)."""
        f = self._flag_cache.get(device)
        if f is None:
            both = torch.tensor([0.0, 1.0], dtype=F32).to(device)
            f = self._flag_cache[device] = (both[0:1], both[1:2])
        return f


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
        # optimizer.step() closes a recorded step before mon.step(loss) brings its loss
        loss_to_come = bool(self._optimizers and self._rec and not self._losses)
        if self._rec:
            if self._snap_fresh:
                self._snap_fresh = False
                if not self._skipped:
                    try:
                        with torch.no_grad():
                            blk = self._snapshot.update_norms(self._params)
                        self._buffer.append(Block(self._step, "update", self._all_pids, blk))
                    except Exception as exc:  # noqa: BLE001 - never take training down
                        self._warn_skip("weight_norm and update_ratio", exc)
            n = len(self._buffer)
            self._record_step()
            self._drop_meta(n)
            if self._exec_order:
                self._order_done = True
        self._bp.reset()
        self._act.reset()
        self._act_pend = []
        self._act_pend_n = 0
        self._time_rows = []
        self._time_vals = []
        self._act_n = {}
        self._losses = []
        self._clip = None
        self._grad_blk = None
        self._origin = None
        self._scale_used = None
        self._skipped = False
        self._pre_done = False
        self._forward_seen = False
        self._inputs = None
        self._step += 1
        self._decide(self._step)
        self._sync_hooks()
        if len(self._buffer) and (
            self._flush_due
            or self._n_recorded % self.flush_every == 0
            or time.monotonic() - self._last_flush > self.flush_secs
        ):
            if loss_to_come and not self._flush_due:
                # flush when the loss comes (or at the next forward pass, if it does not),
                # so that the part holds it
                self._flush_due = True
            else:
                self.flush(wait=False)

    def step(self, loss: torch.Tensor | float | None = None) -> None:
        """Mark the end of a training step (or, with ``optimizer=``, pass the loss).

        Without ``optimizer=``: call it after ``loss.backward()`` (and before
        ``optimizer.step()``, so that the update ratio covers the right step); it records
        the pending step. With ``optimizer=``, steps close on ``optimizer.step()`` and this
        only attaches the loss: to the step just closed if no forward pass has run since,
        otherwise to the pending step.

        Args:
            loss: the training loss (a tensor is kept on its device; no host sync). A
                Python number is kept on the host and meets the device values at the
                flush.
        """
        self._ensure_open()
        if (
            not self._structure_from_graph
            and isinstance(loss, torch.Tensor)
            and loss.grad_fn is not None
        ):  # once: residual joins and attention, read from the loss's autograd graph
            self._structure_from_graph = True
            found = describe_structure(self.model, loss)
            if found is not None:
                self._structure = found
        if loss is not None:
            if isinstance(loss, torch.Tensor):
                if loss.numel() != 1:
                    raise GradwatchValueError(
                        f"loss must be a scalar, got a tensor of shape {tuple(loss.shape)}; "
                        "pass loss.mean() or the value you call backward() on"
                    )
                val = loss.detach().reshape(())
                if val.is_complex():
                    val = val.real
                if val.device.type == "meta":
                    self._warn_skip("a loss on the meta device")
                    loss = None
            elif isinstance(loss, int | float) and not isinstance(loss, bool):
                try:
                    val = torch.tensor(float(loss), dtype=F32)
                except OverflowError:
                    raise GradwatchValueError(
                        f"loss is an integer of {len(str(abs(loss)))} digits, past any float; "
                        "pass the loss as a float or a tensor (float('inf') for an infinite one)"
                    ) from None
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
                        self._buffer.append(Block(prev, "loss", (), val.to(F32).reshape(1)))
                elif self._rec:
                    self._losses.append(val)
            if self._flush_due:
                self.flush(wait=False)  # the flush that waited for this loss
            return
        # manual mode
        if loss is not None and self._rec:
            self._losses.append(val)
        if self._manual_snapshot_step is not None and self._snapshot is not None:
            try:
                with torch.no_grad():
                    blk = self._snapshot.update_norms(self._params)
                self._buffer.append(
                    Block(self._manual_snapshot_step, "update", self._all_pids, blk)
                )
            except Exception as exc:  # noqa: BLE001 - the model moved or changed dtype
                self._warn_skip("update_ratio", exc)
            self._manual_snapshot_step = None
        if self._rec:
            self._take_grad_stats()
            if loss is not None and self._origin is None and val.device.type == "cpu":
                if not bool(torch.isfinite(val)):  # a CPU scalar: no device sync
                    self._trace_origin()
        self._close_step()
