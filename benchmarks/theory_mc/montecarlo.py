"""Brute-force Monte Carlo: ‖∂L/∂(layer output)‖² by autograd, over seeds, random read-out.

Independent of ``gradwatch.theory``: each seed draws a fresh model, runs the fixed batch,
takes L = Σ R ⊙ y with R a fresh standard Gaussian tensor of the output's shape (a random
linear read-out), back-propagates, and reads the gradient of every layer's output (a module
that owns parameters; several calls add up). Each layer's ratio to the output-side layer is
averaged in log over the seeds (a geometric mean), with its standard deviation.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from gradwatch.layers import find_layers

from .configs import Config
from .readout import backprop_random_readout, first_tensor


def gradient_norms(model: torch.nn.Module, inputs: tuple, seed: int) -> dict[str, float]:
    """‖∂L/∂output‖² of every layer for L = Σ R ⊙ y, R ~ N(0, 1) drawn from ``seed``."""
    kept: dict[str, list[torch.Tensor]] = {}
    handles = []
    for ly in find_layers(model):

        def hook(_m, _inp, out, name=ly.name):
            t = first_tensor(out)
            if t is not None and t.requires_grad:
                t.retain_grad()
                kept.setdefault(name, []).append(t)

        handles.append(ly.module.register_forward_hook(hook))
    try:
        backprop_random_readout(model, inputs, seed)
    finally:
        for h in handles:
            h.remove()
    return {
        name: sum(float(t.grad.double().pow(2).sum()) for t in ts if t.grad is not None)
        for name, ts in kept.items()
    }


def measure(config: Config, seeds: int | None = None) -> dict[str, Any]:
    """Geometric mean over seeds of each layer's ‖δ‖² over the output-side layer's.

    Returns:
        {"layers": names (registration order), "log10": mean log10 ratio per layer, "sd":
        its standard deviation over seeds, "seeds": n}; a layer with no gradient in some
        seed has log10 -inf.
    """
    n = seeds or config.seeds
    inputs = config.batch()
    rows = []
    names: list[str] = []
    for s in range(n):
        torch.manual_seed(1000 + s)
        model = config.build()
        model.train()
        norms = gradient_norms(model, inputs, seed=5000 + s)
        order = [ly.name for ly in find_layers(model) if ly.name in norms]
        names = names or order
        last = next(norms[k] for k in reversed(order) if norms[k] > 0)
        rows.append(
            [math.log10(norms[k] / last) if norms.get(k, 0) > 0 else -math.inf for k in names]
        )
    arr = np.array(rows)
    with np.errstate(invalid="ignore"):
        return {"layers": names, "log10": arr.mean(axis=0), "sd": arr.std(axis=0), "seeds": n}
