"""Training on the sequence tasks of pascanu2013 (adding problem, temporal order), watched.

Like :mod:`gradwatch.experiments.training` for classifiers: a plain loop, ``gw.watch``
recording every statistic, optional clipping by global norm (Pascanu et al. 2013).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn


def loss_fn(task: str, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """MSE for the adding problem, cross-entropy for temporal order."""
    return F.mse_loss(out, y) if task == "adding" else F.cross_entropy(out, y)


def train(
    model: nn.Module,
    task: str,
    data: tuple[torch.Tensor, ...],
    *,
    steps: int,
    optimizer: torch.optim.Optimizer,
    batch_size: int,
    clip_norm: float | None,
    run_dir: Path,
    seed: int,
    every: int,
    config: dict[str, Any],
    on_step: Any = None,
) -> list[tuple[int, float]]:
    """Train on a sequence task, recorded by ``gw.watch``; returns [(step, test metric)].

    ``mon.step`` is called right after ``backward``, before clipping: the run records the
    gradients as back-propagated, and the update ratio the (clipped) step taken. The test
    metric (MSE for adding, error rate for temporal order) is taken every ``steps // 10``
    steps and at the end.
    """
    import gradwatch as gw

    u, y, ut, yt = data
    gen = torch.Generator().manual_seed(seed)
    curve: list[tuple[int, float]] = []
    with gw.watch(model, run_dir, every=every, overwrite=True, config=config) as mon:
        for step in range(steps):
            if step % max(1, steps // 10) == 0:
                curve.append((step, evaluate(model, task, ut, yt)))
            idx = torch.randint(0, len(u), (batch_size,), generator=gen)
            loss = loss_fn(task, model(u[idx]), y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            mon.step(loss=loss)
            if clip_norm is not None:
                gw.remedies.clip_grad_norm_(model, clip_norm)
            optimizer.step()
            if on_step is not None:
                on_step(step)
    curve.append((steps, evaluate(model, task, ut, yt)))
    return curve


@torch.no_grad()
def evaluate(model: nn.Module, task: str, u: torch.Tensor, y: torch.Tensor) -> float:
    """Test MSE (adding) or test error rate (temporal order)."""
    out = model(u)
    if task == "adding":
        return float(F.mse_loss(out, y))
    return float((out.argmax(1) != y).float().mean())
