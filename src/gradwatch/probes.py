"""Hooks a checkup installs for one pass.

They record each layer's output shape and the root mean square of its input and output (the
forward signal), the first non-finite output, the back-propagated signal along the residual
stream (at each residual join of the autograd graph), and the gradient through time at the
input of the model and of each recurrent layer (Pascanu et al. 2013).
"""

from __future__ import annotations

from functools import partial
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from gradwatch.jsonable import json_cell, jsonable
from gradwatch.layers import Layer
from gradwatch.verdicts import TEMPORAL_VANISHING_ERROR

#: Columns of ``Checkup.temporal``.
TEMPORAL_COLUMNS = ("layer", "t", "grad_norm", "ratio")


class ForwardProbe:
    """Forward hooks on each layer: its output shape and forward signal, and the first NaN/Inf.

    The forward signal is the root mean square of the layer's first input and first output
    (``rms_in``, ``rms_out``); the first layer, in execution order, whose output holds NaN or
    Inf is ``first``.
    """

    def __init__(self, layers: list[Layer]):
        self.first: str | None = None
        self.shapes: dict[str, list[int]] = {}  # each layer's first output shape, batch first
        self.rms_in: dict[str, float] = {}
        self.rms_out: dict[str, float] = {}
        self.handles = [
            ly.module.register_forward_hook(partial(self._hook, ly.name)) for ly in layers
        ]

    def _hook(self, name: str, module: nn.Module, args: Any, out: Any) -> None:
        first_out = out if isinstance(out, torch.Tensor) else None
        if first_out is None and isinstance(out, tuple | list) and out:
            first_out = out[0] if isinstance(out[0], torch.Tensor) else None
        if first_out is not None and name not in self.shapes:
            self.shapes[name] = [int(n) for n in first_out.shape]
            self.rms_out[name] = _rms(first_out)
            first_in = args[0] if args and isinstance(args[0], torch.Tensor) else None
            if first_in is not None:
                self.rms_in[name] = _rms(first_in)
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


#: Where the input-level flow is kept in ``Checkup.temporal`` (not a layer name).
INPUT = "(input)"


def compounded_decay(ratios: Any) -> float:
    """The decay a per-step factor compounds over a sequence: ``exp(−slope · (T − 1))``.

    ``ratios``: ‖∂L/∂x_t‖ over t (any scale). The slope is the least-squares fit of
    ``ln ‖∂L/∂x_t‖`` against t over the steps before the last (the last step may have a path
    of its own to the loss: a model that reads its output there, a skip ``D·x_T``), leaving
    out exact zeros. A recurrence whose gradient shrinks by a factor f per step gives about
    ``f^(T−1)``, the first step's share of the last; a gradient that is small at the early
    steps but does not decay along them (a convolution whose receptive field covers the
    sequence) gives about 1 whatever the first step's share. NaN with fewer than 3
    positive steps.
    """
    r = np.asarray(ratios, dtype=np.float64)[:-1]
    t = np.nonzero(np.isfinite(r) & (r > 0))[0]
    if len(t) < 3:
        return float("nan")
    slope = float(np.polyfit(t.astype(np.float64), np.log(r[t]), 1)[0])
    return float(np.exp(min(-slope * len(r), 700.0)))


def temporal_reach(ratios: Any, floor: float) -> tuple[float, float]:
    """How far the gradient through time reaches: (share of steps, share of the sequence back).

    ``ratios``: ‖∂L/∂x_t‖ over t (any scale). The first number is the share of the steps
    whose gradient is at least ``floor`` times the largest step's; the second is how far
    back from the last step the farthest such step lies, as a share of the sequence (1 when
    the first step is one of them). A gradient that decays with the lag reaches a tail of
    the sequence, so the two are about equal; one that is uneven over t (paths of different
    gains) reaches steps scattered over it. NaN for no positive step.
    """
    r = np.asarray(ratios, dtype=np.float64)
    r = np.where(np.isfinite(r), r, 0.0)
    if r.size == 0 or not (r.max() > 0):
        return float("nan"), float("nan")
    above = np.nonzero(r >= floor * r.max())[0]
    return float(len(above) / len(r)), float((len(r) - above.min()) / len(r))


def compounding_fit(ratios: Any) -> float:
    """How well a per-step factor describes the gradient through time (R²).

    The share of ``ln ‖∂L/∂x_t‖``'s variance over the steps before the last (exact zeros
    left out) that a straight line in t explains: near 1 where a per-step factor
    compounds (see :func:`compounded_decay`), low where the gradient is uneven over t
    without a trend. 1 for a flat profile; NaN with fewer than 3 positive steps.
    """
    r = np.asarray(ratios, dtype=np.float64)[:-1]
    t = np.nonzero(np.isfinite(r) & (r > 0))[0]
    if len(t) < 3:
        return float("nan")
    y = np.log(r[t])
    var = float(y.var())
    if var <= 0:
        return 1.0
    resid = y - np.polyval(np.polyfit(t.astype(np.float64), y, 1), t)
    return float(max(0.0, 1.0 - resid.var() / var))


def flow_summary(ratios: Any) -> dict[str, Any]:
    """What the temporal rule reads of one flow through time, ‖∂L/∂x_t‖ over t (JSON-safe).

    ``first_over_last`` (‖∂L/∂x_0‖ over ‖∂L/∂x_(T-1)‖), ``steps`` (T), ``half_over_last`` (at
    t = T // 2), ``compounded`` (:func:`compounded_decay`), ``fit``
    (:func:`compounding_fit`), and ``reach`` and ``reach_back`` (:func:`temporal_reach` at
    :data:`~gradwatch.verdicts.TEMPORAL_VANISHING_ERROR` of the largest step).
    """
    r = np.asarray(ratios, dtype=np.float64)
    reach, back = temporal_reach(r, TEMPORAL_VANISHING_ERROR)
    return {
        "first_over_last": json_cell(float(r[0] / r[-1]) if r[-1] > 0 else float("nan")),
        "half_over_last": json_cell(float(r[len(r) // 2] / r[-1]) if r[-1] > 0 else float("nan")),
        "compounded": json_cell(compounded_decay(r)),
        "fit": json_cell(compounding_fit(r)),
        "reach": json_cell(reach),
        "reach_back": json_cell(back),
        "steps": int(len(r)),
    }


class TemporalProbe:
    """Temporal gradient flow: ‖∂L/∂x_t‖ over the time steps t of a sequence.

    Measured where the signal enters, with no knowledge of the cell that carries it:

    - at the model's input, when it has a time axis: a floating ``(N, T, F)`` first input
      (``(T, N, F)`` when the model's recurrent layers read sequence-first), or integer
      ``(N, T)`` tokens, measured at the output of the nn.Embedding that reads them. An
      input whose first layer is a convolution is left out (a convolution over time reaches
      a window of steps by design: steps outside it get an exact 0, not a vanished signal);
    - at the input sequence of each nn.RNN/LSTM/GRU (a leaf input is replaced by a detached
      copy that requires grad, so its gradient exists). When that sequence is the model's
      own input, only the layer's row is kept.

    During backward a tensor hook takes the norm over every axis but time, in float64 (a
    float32 norm of entries below ~1e-19 underflows to 0 although they do not).
    """

    def __init__(self, model: nn.Module):
        self.norms: dict[str, list[torch.Tensor]] = {}
        self.where: dict[str, str] = {}  # INPUT -> what was measured
        self._x: torch.Tensor | None = None  # the model input fed to the forward pass
        self._consumer_seen = False
        # (N, T, ...) unless the model's recurrent layers read sequence-first (T, N, ...)
        seq_first = any(isinstance(m, nn.RNNBase) and not m.batch_first for m in model.modules())
        self._time = 0 if seq_first else 1
        self._fed_to_rnn = False
        self._emb_out: torch.Tensor | None = None
        self.handles = [
            m.register_forward_pre_hook(partial(self._pre, name or "(root)"))
            for name, m in model.named_modules()
            if isinstance(m, nn.RNNBase)
        ]
        self.handles += [
            m.register_forward_hook(self._first_use)
            for m in model.modules()
            if next(m.parameters(recurse=False), None) is not None
        ]

    def watch_input(self, args: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        """The args to run the model on, the first one hooked if it is a sequence."""
        x = args[0]
        if not torch.is_grad_enabled():
            return args
        if x.is_floating_point() and x.dim() == 3 and x.shape[self._time] > 1:
            leaf = x.detach().requires_grad_(True)
            leaf.register_hook(self._input_grad)
            self._x = leaf.clone()  # in-place changes inside forward stay legal
            return (self._x, *args[1:])
        tokens = not (x.is_floating_point() or x.is_complex()) and x.dtype != torch.bool
        if tokens and x.dim() == 2 and x.shape[self._time] > 1:
            self._x = x
        return args

    def _first_use(self, module: nn.Module, args: tuple, out: Any) -> None:
        if self._consumer_seen or self._x is None:
            return
        if not (args and args[0] is self._x):
            return
        self._consumer_seen = True
        if isinstance(module, nn.modules.conv._ConvNd):
            self._x = None  # a convolution over time: not measured (see the class doc)
            self.norms.pop(INPUT, None)
        elif isinstance(module, nn.Embedding) and isinstance(out, torch.Tensor):
            if out.requires_grad and out.dim() == 3:
                self._emb_out = out
                out.register_hook(self._token_grad)
                self.where[INPUT] = "embedding output"

    def _input_grad(self, g: torch.Tensor) -> None:
        if self._x is None or self._fed_to_rnn:
            return
        self.where.setdefault(INPUT, "model input")
        self._grad(INPUT, self._time, g)

    def _token_grad(self, g: torch.Tensor) -> None:
        if not self._fed_to_rnn:
            self._grad(INPUT, self._time, g)

    def _pre(self, name: str, module: nn.RNNBase, args: tuple) -> tuple | None:
        x = args[0] if args else None
        if not isinstance(x, torch.Tensor) or x.dim() not in (2, 3) or not x.is_floating_point():
            return None  # PackedSequence or something else: no temporal flow
        if not torch.is_grad_enabled():
            return None
        if (x is self._x and not self._consumer_seen) or x is self._emb_out:
            self._fed_to_rnn = self._consumer_seen = True  # the layer's own row says it
        time_dim = 1 if (x.dim() == 3 and module.batch_first) else 0
        new_args = None
        if not x.requires_grad:
            x = x.detach().requires_grad_(True)
            new_args = (x, *args[1:])
        x.register_hook(partial(self._grad, name, time_dim))
        return new_args

    def _grad(self, name: str, time_dim: int, g: torch.Tensor) -> None:
        g = g.detach().movedim(time_dim, 0)  # (T, ...)
        norms = torch.linalg.vector_norm(g.flatten(1), dim=1, dtype=torch.float64)
        self.norms.setdefault(name, []).append(norms)

    def frame(self) -> pd.DataFrame:
        """One row per (layer, t): grad_norm and ratio to the last time step.

        The model input's row is named :data:`INPUT`.
        """
        rows = []
        for name, calls in self.norms.items():
            if name == INPUT and self._fed_to_rnn:
                continue
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


def _rms(t: torch.Tensor) -> float:
    """Root mean square of a floating tensor's entries (NaN for other tensors)."""
    if not t.is_floating_point() or t.numel() == 0:
        return float("nan")
    with torch.no_grad():
        return float(torch.linalg.vector_norm(t.detach(), dtype=torch.float64)) / t.numel() ** 0.5


class TrunkProbe:
    """‖∂L/∂h‖ at each residual join h = x + f(x) of the graph: the residual stream's signal.

    A hook on each join's autograd node (``Node.register_hook``) sees the gradient of the
    sum during backward; its norm and shape (batch first) are kept, in the order of
    ``joins`` (input side first).
    """

    def __init__(self, nodes: list[Any]):
        self.norms: list[float] = [float("nan")] * len(nodes)
        self.shapes: list[list[int]] = [[] for _ in nodes]
        self.handles = [n.register_hook(partial(self._hook, i)) for i, n in enumerate(nodes)]

    def _hook(self, i: int, grad_inputs: Any, grad_outputs: Any) -> None:
        g = grad_outputs[0] if grad_outputs else None
        if not isinstance(g, torch.Tensor):
            return
        v = float(torch.linalg.vector_norm(g.detach(), dtype=torch.float64))
        old = self.norms[i]
        self.norms[i] = v if old != old else (old**2 + v**2) ** 0.5
        self.shapes[i] = [int(n) for n in g.shape]

    def remove(self) -> None:
        """Remove the hooks."""
        for h in self.handles:
            h.remove()


def save_state(model: nn.Module) -> dict[str, list]:
    """What a checkup changes in ``model``: gradients, train/eval modes, buffers (copied)."""
    return {
        "grads": [(p, p.grad) for p in model.parameters()],
        "modes": [(m, m.training) for m in model.modules()],
        "buffers": [(b, b.detach().clone()) for b in model.buffers()],
    }


def restore_state(model: nn.Module, state: dict[str, list]) -> None:
    """Put back what :func:`save_state` kept."""
    for p, g in state["grads"]:
        p.grad = g
    for m, training in state["modes"]:
        m.training = training
    with torch.no_grad():
        for b, saved in state["buffers"]:
            b.copy_(saved)


def over_output_side(values: np.ndarray) -> np.ndarray:
    """Divide by the output-side-most finite, non-zero value (NaN if there is none)."""
    ok = np.flatnonzero(np.isfinite(values) & (values != 0))
    return values / values[ok[-1]] if len(ok) else np.full_like(values, np.nan)


def json_records(df: pd.DataFrame) -> list[dict[str, Any]]:
    """Rows of ``df`` as JSON-clean dicts; a NaN cell (no value for the layer) becomes None."""
    return [
        {k: json_cell(float(v)) if isinstance(v, float | np.floating) else jsonable(v)
         for k, v in rec.items()}
        for rec in df.to_dict(orient="records")
    ]
