"""Hooks a checkup installs for one pass.

They record each layer's output shape, the first non-finite output, and the gradient through
time of recurrent layers (Pascanu et al. 2013).
"""

from __future__ import annotations

from functools import partial
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from gradwatch.layers import Layer

#: Columns of ``Checkup.temporal``.
TEMPORAL_COLUMNS = ("layer", "t", "grad_norm", "ratio")


class ForwardProbe:
    """Forward hooks noting, in execution order, the first layer whose output is NaN/Inf."""

    def __init__(self, layers: list[Layer]):
        self.first: str | None = None
        self.shapes: dict[str, list[int]] = {}  # each layer's first output shape, batch first
        self.handles = [
            ly.module.register_forward_hook(partial(self._hook, ly.name)) for ly in layers
        ]

    def _hook(self, name: str, module: nn.Module, args: Any, out: Any) -> None:
        first_out = out if isinstance(out, torch.Tensor) else None
        if first_out is None and isinstance(out, tuple | list) and out:
            first_out = out[0] if isinstance(out[0], torch.Tensor) else None
        if first_out is not None and name not in self.shapes:
            self.shapes[name] = [int(n) for n in first_out.shape]
        if self.first is not None:
            return
        tensors = (
            [out]
            if isinstance(out, torch.Tensor)
            else (
                [t for t in out if isinstance(t, torch.Tensor)]
                if isinstance(out, tuple | list)
                else []
            )
        )
        for t in tensors:
            if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                self.first = name
                return

    def origin(self, args: tuple[torch.Tensor, ...]) -> str | None:
        """Return "inputs" if the inputs hold NaN/Inf, else the first non-finite layer, or None."""
        if any(a.is_floating_point() and not bool(torch.isfinite(a).all()) for a in args):
            return "inputs"
        return self.first

    def remove(self) -> None:
        """Remove the hooks."""
        for h in self.handles:
            h.remove()


class TemporalProbe:
    """Temporal gradient flow: ‖∂L/∂x_t‖ of the input sequence of each recurrent layer.

    A forward pre-hook on each nn.RNN/LSTM/GRU hooks its input sequence (a leaf input is
    replaced by a detached copy that requires grad, so its gradient exists); during backward
    the tensor hook takes the norm over every axis but time.
    """

    def __init__(self, model: nn.Module):
        self.norms: dict[str, list[torch.Tensor]] = {}
        self.handles = [
            m.register_forward_pre_hook(partial(self._pre, name or "(root)"))
            for name, m in model.named_modules()
            if isinstance(m, nn.RNNBase)
        ]

    def _pre(self, name: str, module: nn.RNNBase, args: tuple) -> tuple | None:
        x = args[0] if args else None
        if not isinstance(x, torch.Tensor) or x.dim() not in (2, 3) or not x.is_floating_point():
            return None  # PackedSequence or something else: no temporal flow
        if not torch.is_grad_enabled():
            return None
        time_dim = 1 if (x.dim() == 3 and module.batch_first) else 0
        new_args = None
        if not x.requires_grad:
            x = x.detach().requires_grad_(True)
            new_args = (x, *args[1:])
        x.register_hook(partial(self._grad, name, time_dim))
        return new_args

    def _grad(self, name: str, time_dim: int, g: torch.Tensor) -> None:
        g = g.detach().float().movedim(time_dim, 0)  # (T, ...)
        self.norms.setdefault(name, []).append(torch.linalg.vector_norm(g.flatten(1), dim=1))

    def frame(self) -> pd.DataFrame:
        """One row per (layer, t): grad_norm and ratio to the last time step."""
        rows = []
        for name, calls in self.norms.items():
            same = [c for c in calls if c.shape == calls[0].shape]
            norms = torch.sqrt(sum(c**2 for c in same)).cpu().numpy().astype(np.float64)
            last = norms[-1]
            ratio = norms / last if last > 0 else np.full_like(norms, np.nan)
            rows += [
                {"layer": name, "t": t, "grad_norm": float(v), "ratio": float(r)}
                for t, (v, r) in enumerate(zip(norms, ratio, strict=True))
            ]
        return pd.DataFrame(rows, columns=list(TEMPORAL_COLUMNS))

    def remove(self) -> None:
        """Remove the hooks."""
        for h in self.handles:
            h.remove()


# ------------------------------------------------------------------------ model state
def save_state(model: nn.Module) -> dict[str, list]:
    """What ``gw.check`` puts back: each parameter's ``.grad``, module modes, buffers."""
    return {
        "grads": [(p, p.grad) for p in model.parameters()],
        "modes": [(m, m.training) for m in model.modules()],
        "buffers": [(b, b.detach().clone()) for b in model.buffers()],
    }


def restore_state(model: nn.Module, state: dict[str, list]) -> None:
    """Put back what :func:`save_state` saved."""
    for p, g in state["grads"]:
        p.grad = g
    for m, training in state["modes"]:
        m.training = training
    with torch.no_grad():
        for b, saved in state["buffers"]:
            b.copy_(saved)
