"""Brute-force reference statistics, computed with plain autograd, independently of gradwatch."""

from __future__ import annotations

import math

import torch
from torch import nn


def layer_modules(model: nn.Module) -> dict[str, nn.Module]:
    out = {}
    for name, m in model.named_modules():
        if any(True for _ in m.parameters(recurse=False)):
            out[name or "(root)"] = m
    return out


def brute_force_step(model: nn.Module, loss_fn) -> dict[str, dict[str, float]]:
    """Run forward+backward once; return per-layer grad_norm and backprop_norm.

    The back-propagated signal is read with ``retain_grad`` on every tensor each layer outputs
    (summing squares over calls and outputs): the textbook definition.
    """
    mods = layer_modules(model)
    outs: dict[str, list[torch.Tensor]] = {n: [] for n in mods}
    handles = []

    def flat(o):
        if isinstance(o, torch.Tensor):
            return [o]
        if isinstance(o, tuple | list):
            return [t for x in o for t in flat(x)]
        return []

    for name, m in mods.items():
        def hook(mod, args, out, name=name):
            for t in flat(out):
                if t.requires_grad:
                    t.retain_grad()
                    outs[name].append(t)
        handles.append(m.register_forward_hook(hook))
    loss = loss_fn(model)
    loss.backward()
    for h in handles:
        h.remove()
    res = {}
    for name, m in mods.items():
        grads = [p.grad for p in m.parameters(recurse=False) if p.grad is not None]
        r = {}
        if grads:
            r["grad_norm"] = math.sqrt(sum(float((g.double() ** 2).sum()) for g in grads))
            r["grad_max_abs"] = max(float(g.abs().max()) for g in grads)
        bp = [t.grad for t in outs[name] if t.grad is not None]
        if bp:
            r["backprop_norm"] = math.sqrt(sum(float((g.double() ** 2).sum()) for g in bp))
        res[name] = r
    return res
