"""The back-propagated tap: ``backprop_norm``, the L2 norm of d loss / d output of each layer.

At steps that record it, each layer's output (from the shared per-layer forward hook,
:class:`~gradwatch.monitor.tracker.LayerTracker`) gets a tensor hook, built once per layer
and installed as ``Tensor.register_hook`` would but without the removable handle it builds
per call. During backward the hook writes the norm of the incoming gradient into the layer's
slot of a preallocated buffer (``out=``; a BLAS dot for large float32 gradients); a later
call of the same layer in the step (shared module, recurrent cell, gradient accumulation)
adds its square into an accumulator. Under GradScaler the norms are divided by the scale on
the device when the step is recorded. See :mod:`gradwatch.stats.backprop` for the statistic.

On CPU, with gradwatch's compiled kernels (:mod:`gradwatch.stats.native`), the hook is a C++
one (``hook_sumsq``): it adds the squared norm into the layer's slot of a CPU buffer, and no
Python runs in the backward pass for it. The shared forward hook hands each layer output to a
compiled listener (``LayerOutputHook``) that hangs it, so what remains in Python per layer is
the forward hook itself; outputs it does not take (tuples, other devices) come back to
:meth:`BackpropTap.on_layer_output`.

Other taps read the same gradients through :meth:`BackpropTap.listen`: their function is
called with ``(layer index, d loss / d output)`` inside the hook, at the steps they ask for,
so a statistic of the back-propagated signal costs no second hook per layer.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from gradwatch.monitor.hookkit import FAST_DTYPES, RowBuffer, hook_grad, tensors_in
from gradwatch.monitor.sharding import is_dtensor, is_tensor_parallel
from gradwatch.monitor.tap import Record, StepPlan, Tap, register_tap
from gradwatch.monitor.tensor_parallel import TensorParallelShares
from gradwatch.stats import native
from gradwatch.stats.numeric import dense_real

F32 = torch.float32
#: From this many elements a float32 gradient's norm is taken with a BLAS dot.
DOT_MIN = 1 << 14

Listener = Callable[[int, torch.Tensor], None]


@register_tap
class BackpropTap(Tap):
    """``backprop_norm`` per layer, and the back-propagated gradients for other taps."""

    name = "backprop"
    sources = ("backprop",)

    def install(self) -> None:
        """The row buffer and one gradient hook function per layer (built once)."""
        self.active = self.needed  # listen() activates it too
        self.buf = RowBuffer(1)
        self.step = -1
        self.record = False
        self._listeners: list[tuple[Listener, Callable[[StepPlan], bool]]] = []
        self.listening: tuple[Listener, ...] = ()
        n = len(self.ctx.layers)
        self.fns = [self._make_hook(li) for li in range(n)]
        self.sq = torch.zeros(n, dtype=F32)  # the compiled hooks' sums of squares, per layer
        self.sq_step = torch.full((n,), -1, dtype=torch.long)  # the step each slot is of
        self.cpp_hook: Any = None  # native hook_sumsq at this step, or None
        self.cpp_stamped: Any = None  # native stamped (its slots' read-back) at this step
        self.cpp_used = False
        self.tp: TensorParallelShares | None = None  # under tensor parallelism (set lazily)
        self.cpp_listener: Any = None  # the compiled layer-output listener (made once)

    def listen(self, fn: Listener, when: Callable[[StepPlan], bool]) -> None:
        """Call ``fn(li, grad)`` with each layer's d loss / d output at steps where ``when(plan)``.

        ``grad`` is autograd's tensor: read it, never change it or keep it past the call.
        Under GradScaler it is scaled (``ctx.inv_scale()`` unscales).
        """
        self._listeners.append((fn, when))
        self.active = True

    def begin_step(self, plan: StepPlan) -> None:
        """Reset the rows; layer outputs wanted when the norm is due or a listener asks."""
        self.buf.reset()
        self.step = plan.step
        self.record = self.needed and plan.due("backprop_norm")
        self.listening = tuple(fn for fn, when in self._listeners if when(plan))
        self.layer_outputs = self.record or bool(self.listening)
        if self.tp is None and is_tensor_parallel(self.ctx.sharded):
            self.tp = TensorParallelShares(self.ctx, "backprop_norm")
        nat = native.get() if self.record and not self.listening and self.tp is None else None
        self.cpp_hook = nat.hook_sumsq if nat is not None else None
        self.cpp_stamped = nat.stamped if nat is not None else None  # read back at collect
        self.cpp_used = False
        self.layer_output_fn = None
        if nat is not None and hasattr(nat, "LayerOutputHook"):
            fn = self.cpp_listener
            if fn is None or type(fn) is not nat.LayerOutputHook:
                fn = self.cpp_listener = nat.LayerOutputHook(self.sq, self.sq_step,
                                                             self.on_layer_output)
            fn.step = plan.step
            self.layer_output_fn = fn
            self.cpp_used = True  # collect reads the slots stamped with this step

    def on_layer_output(self, li: int, out: Any) -> None:
        """Hang the layer's gradient hook on each output that requires grad."""
        if not torch.is_grad_enabled():  # an evaluation pass (an output may pass through)
            return
        if self.tp is not None and self.record:
            self.tp.see_output(li, out)
        if type(out) is torch.Tensor:
            if out.requires_grad:
                self._hang(li, out)
            return
        for t in tensors_in(out):
            if t.requires_grad:
                self._hang(li, t)

    def _hang(self, li: int, t: torch.Tensor) -> None:
        # the C++ hook takes dense real floating CPU outputs (their gradients are too)
        if (self.cpp_hook is not None and t.is_cpu and t.is_floating_point()
                and t.layout is torch.strided):
            self.cpp_hook(t, self.sq, self.sq_step, li, self.step)  # no Python in backward
            self.cpp_used = True
        else:
            hook_grad(t, self.fns[li])

    def _make_hook(self, li: int):
        bp = self.buf
        tap = self

        def on_backprop(grad: torch.Tensor) -> None:
            # d loss / d output of layer li: its norm into the layer's slot (first call of
            # the step) or into its accumulator (later calls)
            try:
                if is_dtensor(grad):  # a DTensor output (tensor parallelism): its local part
                    grad = tap.tp.see_grad(li, grad) if tap.tp is not None else grad.to_local()
                for fn in tap.listening:
                    fn(li, grad)
                if not tap.record:
                    return
                if bp.stamp[li] != tap.step if li < len(bp.stamp) else True:
                    if (
                        grad.dtype in FAST_DTYPES
                        and bp.buf is not None
                        and grad.device == bp.buf.device
                        and grad.layout == torch.strided
                        and not grad.requires_grad
                    ):
                        slot = bp.views[li][0]
                        if grad.numel() >= DOT_MIN and grad.dtype == F32 and grad.is_contiguous():
                            # mid-size float32: a BLAS dot (one thread) beats vector_norm's
                            # parallel reduction here (measured: 10 vs 17 us at 32768)
                            flat = grad.view(-1)
                            torch.dot(flat, flat, out=slot).sqrt_()
                        else:
                            torch.linalg.vector_norm(grad, dtype=F32, out=slot)
                        bp.stamp[li] = tap.step
                        bp.called.append(li)
                        return
                    tap._slow(li, grad, first=True)
                else:
                    tap._slow(li, grad, first=False)
            except Exception as exc:  # noqa: BLE001 - never take training down
                if tap.tp is not None and tap.ctx.distributed:
                    raise  # skipped on one rank, the step's collective would hang
                tap.ctx.warn("backprop_norm", exc)

        return on_backprop

    def _slow(self, li: int, grad: torch.Tensor, first: bool) -> None:
        """General path: other dtypes, layouts or devices, and repeated calls of a layer."""
        g = dense_real(grad.detach())
        if g is None:
            self.ctx.warn(f"backprop_norm of {grad.layout}/{grad.device.type} gradients")
            return
        sq = torch.linalg.vector_norm(g, dtype=torch.float64).to(F32).square()
        bp = self.buf
        if first:
            bp.ensure(len(self.ctx.layers), g.device)
            bp.views[li][0].fill_(0.0)
            bp.stamp[li] = self.step
            bp.called.append(li)
        prev = bp.extra.get(li)
        sq = sq.to(bp.buf.device)
        bp.extra[li] = sq if prev is None else prev + sq

    def collect(self, rec: Record) -> None:
        """The step's norms (calls of a layer pooled, unscaled) as one ``bp`` block."""
        got = self.buf.gather(self.ctx.index)
        if rec.skipped:
            return
        parts, layers = [], []
        if got is not None:
            layers, vals = got
            sq = vals[:, 0].square()
            for li, extra in self.buf.extra.items():
                j = layers.index(li)
                sq[j] = sq[j] + extra
            parts.append(sq)
        if self.cpp_used:  # the compiled hooks' layers (a CPU tensor: no device sync)
            # the slots written at this step and their sums of squares, in one compiled call
            done, got_sq = self.cpp_stamped(self.sq, self.sq_step, self.step)
            both = [li for li in done if li in layers]  # outputs on both kinds of hook
            for li in both:
                j = layers.index(li)
                parts[0][j] = parts[0][j] + self.sq[li].to(parts[0].device)
            if both:
                keep = [k for k, li in enumerate(done) if li not in both]
                done, got_sq = [done[k] for k in keep], got_sq[keep]
            if done:
                layers = [*layers, *done]
                parts.append(got_sq.to(parts[0].device) if parts else got_sq)
        if not parts:
            return
        sq = torch.cat(parts) if len(parts) > 1 else parts[0]
        inv = self.ctx.inv_scale()
        if not isinstance(inv, float):
            sq = sq * inv.to(sq.device).square()
        if self.tp is not None:  # the ranks' parts, combined over the mesh within the step
            self.tp.emit_squares(rec, "shard_bp", tuple(layers), sq)
            return
        rec.emit("bp", tuple(layers), sq.sqrt())

    def remove(self) -> None:
        """Forget the listeners."""
        self.layer_output_fn = self.cpp_listener = None
        self.listening = ()
        self._listeners.clear()
