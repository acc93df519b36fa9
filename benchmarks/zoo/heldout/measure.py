"""Brute-force measurements behind the held-out truth: plain autograd, no gradwatch.

Every figure the held-out cases state comes from here, computed with plain autograd and
never with gradwatch's statistics, so that the truth is measured, not read off the tool it
judges:

- **flow along the trunk**: ``‖∂L/∂h_b‖`` at the output ``h_b`` of each module ``b`` named by
  the case's :class:`Probe` (the residual stream after each block, or each layer of a plain
  chain), input side first, by ``retain_grad`` on the outputs in a float64 copy of the model
  (so a gradient of 1e-60 is a number, not an underflow); the forward std of the same outputs;
- **flow through time**: ``‖∂L/∂x_t‖`` for every step t of the sequence where it enters the
  model (the input itself, or the output of the embedding);
- ``‖∇W‖/‖W‖`` of every weight; the loss; NaN/Inf anywhere;
- **units**: the fraction of rectifier units (features of a linear layer, channels of a conv)
  that are zero on every example and position of the batch (dead), and the fraction of
  sigmoid/tanh outputs in their flat tails (|tanh| > 0.99, sigmoid outside [0.01, 0.99],
  where the derivative is below 2% of its peak);
- **a training run** exactly as the zoo's runner trains the case (same seeds, batches,
  optimizer, one thread, subnormals flushed), without a monitor, judged by the runner's
  :func:`~benchmarks.zoo.run.judge`: the loss curve, the first
  non-finite step, the total gradient norm per step and how far each weight moved,
  ``‖W_end − W_0‖/‖W_0‖``.

References: Glorot & Bengio 2010 (back-propagated gradients per layer); Pascanu et al. 2013
(``∂L/∂x_t`` over time); He et al. 2015 (forward variance).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from ..case import Case, Train
from ..run import judge

#: Activation modules whose units can die (exactly zero on a whole batch).
RECTIFIERS = (nn.ReLU, nn.ReLU6)
#: Saturating activations and the test for "in a flat tail" (derivative below 2% of its peak).
SATURATING: dict[type[nn.Module], Callable[[torch.Tensor], torch.Tensor]] = {
    nn.Tanh: lambda y: y.abs() > 0.99,
    nn.Sigmoid: lambda y: (y < 0.01) | (y > 0.99),
}


@dataclass(frozen=True)
class Probe:
    """Where to measure a case.

    Attributes:
        trunk: ``trunk(model) -> [module names]``: the modules whose outputs lie on the path
            the gradient takes from the loss to the input (the residual stream after each
            block; each layer of a plain chain), input side first.
        time_at: None when the model has no time axis; "" to measure ``∂L/∂x_t`` at the first
            input; else the name of the module whose output is the sequence (an embedding).
        time_dim: the time axis of that tensor.
        chance: the loss of a model that has learnt nothing (None: not defined).
        unit_dim: the unit (feature/channel) axis of 3-d activations: 1 for (N, C, T) conv
            outputs, -1 for (N, T, C) sequences.
    """

    trunk: Callable[[nn.Module], list[str]]
    time_at: str | None = None
    time_dim: int = 1
    chance: float | None = None
    unit_dim: int = -1


def children_of(*paths: str) -> Callable[[nn.Module], list[str]]:
    """``trunk`` for modules whose children (in order) are the blocks: ``"stages.0"`` etc.

    Each path names a container; its direct children are listed in order, containers one
    after another (e.g. ``children_of("blocks")`` gives ``blocks.0 … blocks.n``).
    """

    def trunk(model: nn.Module) -> list[str]:
        names = []
        for path in paths:
            mod = model.get_submodule(path) if path else model
            names += [f"{path}.{n}" if path else n for n, _ in mod.named_children()]
        return names

    return trunk


def modules_of(kinds: tuple[type[nn.Module], ...]) -> Callable[[nn.Module], list[str]]:
    """``trunk`` for a plain chain: every module of these types, in registration order."""

    def trunk(model: nn.Module) -> list[str]:
        return [n for n, m in model.named_modules() if isinstance(m, kinds)]

    return trunk


def _first_tensor(out: Any) -> torch.Tensor | None:
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, dict):  # Hugging Face ModelOutput
        out = list(out.values())
    if isinstance(out, list | tuple):
        for o in out:
            t = _first_tensor(o)
            if t is not None:
                return t
    return None


def _as_args(inputs) -> tuple:
    return inputs if isinstance(inputs, tuple) else (inputs,)


def _to(x, dtype):
    if isinstance(x, tuple):
        return tuple(_to(v, dtype) for v in x)
    if isinstance(x, torch.Tensor) and x.is_floating_point():
        return x.to(dtype)
    return x


def loss_of(out, targets, loss_fn) -> torch.Tensor:
    """The case's loss (cross-entropy when the case gives none, as the runner does)."""
    if loss_fn is not None:
        return loss_fn(out, targets)
    return nn.functional.cross_entropy(out, targets)


def _units_zero(y: torch.Tensor, unit_dim: int) -> torch.Tensor:
    """Per unit: True where the output is zero on every example and position."""
    if y.dim() == 2:
        dim = 1
    elif y.dim() == 3:
        dim = unit_dim % 3
    else:
        dim = 1
    y = y.detach().movedim(dim, 0).reshape(y.shape[dim], -1)
    return (y == 0).all(1)


def measure(model: nn.Module, inputs, targets, loss_fn, probe: Probe,
            dtype: torch.dtype = torch.float64) -> dict[str, Any]:
    """One forward/backward pass on a copy of ``model`` in ``dtype``; every figure of one batch.

    The model is copied (in train mode, as ``gw.check`` runs its pass), so neither its
    weights nor its BatchNorm statistics change.

    Returns:
        ``loss``, ``nonfinite`` (NaN/Inf in the loss or a gradient), ``trunk`` (a list of
        ``{name, grad_norm, grad_rms, act_std}``, input side first), ``time_grad`` (the list
        ``‖∂L/∂x_t‖`` over t, or None), ``grad_weight_ratio`` ({weight name: ‖∇W‖/‖W‖}),
        ``dead`` ({module: fraction of dead units}) and ``saturated`` ({module: fraction
        of outputs in the tails}).
    """
    m = copy.deepcopy(model).to(dtype)
    m.train()
    m.zero_grad(set_to_none=True)
    names = probe.trunk(m)
    mods = dict(m.named_modules())
    outs: dict[str, torch.Tensor] = {}
    dead: dict[str, list[torch.Tensor]] = {}
    sat: dict[str, list[float]] = {}
    handles = []

    def keep(name):
        def hook(_mod, _inp, out):
            t = _first_tensor(out)
            if t is not None and t.requires_grad:
                t.retain_grad()
                outs[name] = t  # the last call wins (a module used once on the trunk)
        return hook

    def units(name, module):
        def hook(_mod, _inp, out):
            if isinstance(module, RECTIFIERS):
                z = _units_zero(out, probe.unit_dim)
                prev = dead.get(name)
                dead[name] = [z if prev is None else prev[0] & z]
            else:
                sat.setdefault(name, []).append(float(SATURATING[type(module)](out).float()
                                                      .mean()))
        return hook

    for name in names:
        handles.append(mods[name].register_forward_hook(keep(name)))
    time_name = probe.time_at
    if time_name:
        handles.append(mods[time_name].register_forward_hook(keep("__time__")))
    for name, mod in m.named_modules():
        if isinstance(mod, RECTIFIERS) or type(mod) in SATURATING:
            handles.append(mod.register_forward_hook(units(name, mod)))
    args = _to(_as_args(inputs), dtype)
    if time_name == "":
        args = (args[0].detach().clone().requires_grad_(True), *args[1:])
    tgt = _to(targets, dtype)
    try:
        out = m(*args)
        loss = loss_of(out, tgt, loss_fn)
        loss.backward()
    finally:
        for h in handles:
            h.remove()
    trunk = []
    for name in names:
        h = outs.get(name)
        g = h.grad if h is not None else None
        trunk.append({
            "name": name,
            "grad_norm": float(g.norm()) if g is not None else float("nan"),
            "grad_rms": float(g.pow(2).mean().sqrt()) if g is not None else float("nan"),
            "act_std": float(h.detach().std()) if h is not None else float("nan"),
        })
    time_grad = None
    if time_name is not None:
        seq = args[0] if time_name == "" else outs.get("__time__")
        g = seq.grad
        if g is not None:
            g = g.movedim(probe.time_dim, 0)  # (T, ...)
            time_grad = [float(v) for v in g.reshape(g.shape[0], -1).norm(dim=1)]
    ratios = {}
    finite = math.isfinite(float(loss.detach()))
    for name, p in m.named_parameters():
        if p.grad is None:
            continue
        finite = finite and bool(torch.isfinite(p.grad).all())
        if p.dim() >= 2:
            w = float(p.detach().norm())
            ratios[name] = float(p.grad.norm()) / w if w > 0 else float("inf")
    return {
        "loss": float(loss.detach()), "nonfinite": not finite, "trunk": trunk,
        "time_grad": time_grad,
        "grad_weight_ratio": ratios,
        "dead": {k: float(v[0].float().mean()) for k, v in dead.items()},
        "saturated": {k: float(np.mean(v)) for k, v in sat.items()},
    }


def summarise(meas: dict[str, Any], chance: float | None = None) -> dict[str, Any]:
    """The headline figures of :func:`measure`.

    - ``trunk_ratio``: ``‖δ‖`` at the first trunk module over ``‖δ‖`` at the last (L2 norms
      of the whole tensors); ``trunk_rms_ratio`` the same per element; ``trunk_factor`` the
      per-block geometric mean ``trunk_ratio^(1/(n-1))``; ``trunk_min``/``trunk_max`` the
      extremes of ``‖δ_b‖/‖δ_last‖`` along the trunk;
    - ``fwd_growth``: forward std at the last trunk module over the first;
    - ``time_ratio``: ``‖∂L/∂x_0‖ / ‖∂L/∂x_{T-1}‖``; ``time_reach``: how many steps back from
      the last the gradient stays above 1e-4 of its largest value;
    - ``gw_ratio_max`` / ``gw_ratio_first``: ``‖∇W‖/‖W‖``, largest and of the first weight;
    - ``dead_max``, ``saturated_max``: the worst activation module;
    - ``loss``, ``loss_over_chance``.
    """
    trunk = meas["trunk"]
    out: dict[str, Any] = {"loss": meas["loss"], "nonfinite": meas["nonfinite"]}
    if chance:
        out["loss_over_chance"] = meas["loss"] / chance
    if len(trunk) >= 2:
        first, last = trunk[0], trunk[-1]
        norms = np.array([t["grad_norm"] for t in trunk])
        with np.errstate(divide="ignore", invalid="ignore"):
            out["trunk_ratio"] = float(np.float64(first["grad_norm"]) / last["grad_norm"])
            out["trunk_rms_ratio"] = float(np.float64(first["grad_rms"]) / last["grad_rms"])
            rel = norms / last["grad_norm"]
            finite = rel[np.isfinite(rel)]
            out["trunk_min"] = float(finite.min()) if finite.size else float("nan")
            out["trunk_max"] = float(finite.max()) if finite.size else float("nan")
            r = out["trunk_ratio"]
            out["trunk_factor"] = (float(r ** (1 / (len(trunk) - 1))) if r > 0 else
                                   (0.0 if r == 0 else float("nan")))
            out["fwd_growth"] = float(np.float64(last["act_std"]) / first["act_std"])
        out["trunk_len"] = len(trunk)
    tg = meas["time_grad"]
    if tg:
        tg = np.array(tg)
        with np.errstate(divide="ignore", invalid="ignore"):
            out["time_ratio"] = float(np.float64(tg[0]) / tg[-1])
        big = tg.max()
        above = np.nonzero(tg >= 1e-4 * big)[0] if big > 0 else np.array([len(tg) - 1])
        out["time_reach"] = int(len(tg) - above.min())
        out["time_len"] = len(tg)
    ratios = meas["grad_weight_ratio"]
    if ratios:
        out["gw_ratio_max"] = max(ratios.values())
        out["gw_ratio_first"] = next(iter(ratios.values()))
    out["dead_max"] = max(meas["dead"].values(), default=0.0)
    out["saturated_max"] = max(meas["saturated"].values(), default=0.0)
    return out


def _seeded(seed: int, build):
    torch.manual_seed(seed)
    return build()


def build_at_init(case: Case) -> tuple[nn.Module, Any, Any]:
    """The model and batch exactly as the runner's check at initialisation builds them."""
    model = _seeded(case.seed, case.model)
    torch.manual_seed(case.seed + 1)
    inputs, targets = case.batch()
    return model, inputs, targets


def train_plain(case: Case) -> tuple[nn.Module, dict[str, Any]]:
    """Train the case as the runner does, with no monitor; return the model and the figures.

    Same seeds, batches, optimizer and loop as ``benchmarks.zoo.run.train_watched`` (one
    thread, subnormals flushed; stops at a non-finite loss when divergence is the stated
    outcome). Figures: the losses (every step), the first non-finite step, the total
    gradient norm per step, the update ``‖Δθ‖/‖θ‖`` of each step (over every weight), the
    movement ``‖W_end − W_0‖/‖W_0‖`` of every weight
    (``move``; weights that start at 0 are left out), the outcome (:func:`judge`) and the
    wall time.
    """
    tr: Train = case.train
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    t0 = time.perf_counter()
    try:
        model = _seeded(case.seed, tr.model or case.model)
        opt = tr.optimizer(model)
        loss_fn = tr.loss or case.loss
        scaler = (torch.amp.GradScaler("cpu", init_scale=tr.scaler_init_scale)
                  if tr.scaler_init_scale is not None else None)
        w0 = {n: p.detach().clone() for n, p in model.named_parameters() if p.dim() >= 2}
        weights = [p for p in model.parameters() if p.dim() >= 2]
        updates: list[float] = []
        losses: list[float] = []
        gnorms: list[float] = []
        nan_step = None
        for step in range(tr.steps):
            opt.zero_grad(set_to_none=True)
            total = 0.0
            for micro in range(tr.accumulate):
                inputs, targets = tr.batch(step * tr.accumulate + micro)
                loss = loss_of(model(*_as_args(inputs)), targets, loss_fn) / tr.accumulate
                (scaler.scale(loss) if scaler is not None else loss).backward()
                total += float(loss.detach())
            grads = [p.grad for p in model.parameters() if p.grad is not None]
            gnorms.append(float(torch.linalg.vector_norm(
                torch.stack([g.norm() for g in grads]))) if grads else 0.0)
            before = [w.detach().clone() for w in weights]
            if scaler is not None:
                scaler.step(opt)
                scaler.update()
            else:
                opt.step()
            with torch.no_grad():  # ‖Δθ‖/‖θ‖ of this step, over every weight
                num = sum(float((w - b).pow(2).sum()) for w, b in zip(weights, before,
                                                                       strict=True))
                den = sum(float(b.pow(2).sum()) for b in before)
            updates.append(math.sqrt(num / den) if den > 0 else float("nan"))
            losses.append(total)
            if not math.isfinite(total) and nan_step is None:
                nan_step = step
            if not math.isfinite(total) and tr.outcome == "diverges":
                break
        move = {}
        for n, p in model.named_parameters():
            if n in w0 and float(w0[n].norm()) > 0:
                move[n] = float((p.detach() - w0[n]).norm() / w0[n].norm())
    finally:
        torch.set_flush_denormal(False)
        torch.set_num_threads(threads)
    res = judge(losses, tr)
    res.update({"steps_run": len(losses), "nan_step": nan_step, "wall_s": time.perf_counter() - t0,
                "losses": losses, "grad_norms": gnorms, "update_ratios": updates,
                "move": move})
    return model, res


def move_summary(move: dict[str, float]) -> dict[str, float]:
    """Movement of the first weight (input side), the last, and the median of all."""
    if not move:
        return {}
    vals = list(move.values())
    return {"move_first": vals[0], "move_last": vals[-1], "move_median": float(np.median(vals))}
