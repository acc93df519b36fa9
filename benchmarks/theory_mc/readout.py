"""The Monte Carlo's read-out: L = Σ R ⊙ y with R a fresh standard Gaussian tensor, y the
model's output, back-propagated (shared by the layer-wise and the through-time measurements)."""

from __future__ import annotations

from typing import Any

import torch


def first_tensor(out: Any) -> torch.Tensor | None:
    """The tensor a model or layer returned (the first of a tuple, a HF output's logits)."""
    if isinstance(out, torch.Tensor):
        return out
    logits = getattr(out, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    if isinstance(out, tuple | list):
        for o in out:
            t = first_tensor(o)
            if t is not None:
                return t
    return None


def backprop_random_readout(model: torch.nn.Module, inputs: tuple, seed: int) -> None:
    """Run ``model`` on ``inputs`` and back-propagate Σ R ⊙ y, R ~ N(0, 1) drawn from ``seed``."""
    y = first_tensor(model(*inputs))
    r = torch.randn(y.shape, generator=torch.Generator().manual_seed(seed), dtype=y.dtype)
    (y * r).sum().backward()
