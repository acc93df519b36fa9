"""The one training loop the experiments share: minibatch SGD on a classifier, watched.

Kept deliberately plain (nanoGPT's ``train.py`` in miniature): shuffle, forward,
cross-entropy, backward, step, and ``gw.watch`` recording every statistic into a run
directory. Everything the claims need is read back from that run directory.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn


@torch.no_grad()
def error_rate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 2048) -> float:
    """Classification error of ``model`` on (x, y), in eval mode (then back to train mode)."""
    was = model.training
    model.eval()
    wrong = 0
    for lo in range(0, len(x), batch):
        wrong += int((model(x[lo : lo + batch]).argmax(1) != y[lo : lo + batch]).sum())
    model.train(was)
    return wrong / len(x)


@torch.no_grad()
def mean_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 2048) -> float:
    """Mean cross-entropy of ``model`` on (x, y), in eval mode (then back to train mode)."""
    was = model.training
    model.eval()
    total = 0.0
    for lo in range(0, len(x), batch):
        out = model(x[lo : lo + batch])
        total += float(F.cross_entropy(out, y[lo : lo + batch], reduction="sum"))
    model.train(was)
    return total / len(x)


def train_classifier(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    steps: int,
    lr: float,
    batch_size: int,
    run_dir: str | Path | None,
    seed: int,
    momentum: float = 0.0,
    weight_decay: float = 0.0,
    milestones: tuple[int, ...] = (),
    every: int | str = 1,
    detail_every: int = 10,
    config: dict[str, Any] | None = None,
    on_step: Callable[[int], None] | None = None,
) -> Path | None:
    """Train ``model`` with minibatch SGD and cross-entropy, recorded by ``gw.watch``.

    Minibatches are drawn without replacement, reshuffled every epoch by a generator
    seeded with ``seed`` (so two calls with the same seed see the same batches). The step
    recorded as 0 is taken before the first update: its gradients are those at
    initialisation.

    Args:
        model: the classifier, trained in place.
        x: inputs, (N, ...).
        y: int64 labels, (N,).
        steps: optimizer steps.
        lr: learning rate.
        batch_size: minibatch size.
        run_dir: where ``gw.watch`` writes the run (replaced if it exists); None: in memory.
        seed: seed of the batch order.
        momentum: SGD momentum.
        weight_decay: SGD weight decay (L2 penalty on every parameter).
        milestones: steps at which the learning rate is divided by 10 (the step schedule
            of He et al. 2015, who divide it by 10 when the error plateaus).
        every: ``gw.watch``'s recording schedule.
        detail_every: ``gw.watch``'s schedule for the slow statistics (activations, ...).
        config: stored in the run's meta.json.
        on_step: called with the step number after each step (progress bars).

    Returns:
        the run directory (None when kept in memory).
    """
    import gradwatch as gw

    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, list(milestones), gamma=0.1)
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(x), generator=gen)
    pos = 0
    model.train()
    with gw.watch(
        model,
        run_dir,
        optimizer=opt,
        every=every,
        detail_every=detail_every,
        overwrite=True,
        config=config,
    ) as mon:
        for step in range(steps):
            if pos + batch_size > len(x):
                order, pos = torch.randperm(len(x), generator=gen), 0
            idx = order[pos : pos + batch_size]
            pos += batch_size
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            mon.step(loss=loss)
            sched.step()
            if on_step is not None:
                on_step(step)
    return Path(run_dir) if run_dir is not None else None


def probe(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    run_dir: str | Path | None,
    config: dict[str, Any] | None = None,
) -> Path | None:
    """Record one forward/backward pass on a large batch, without updating the weights.

    The gradient statistics of a minibatch of 10 are noisy; this records every statistic
    (``detail_every=1``) for one pass over ``x`` as step 0 of its own run directory — the
    gradient flow of the network as it is now (at initialisation, when called before
    training). The parameters' ``.grad`` are cleared afterwards.

    Args:
        model: the classifier (its train/eval mode is used as is).
        x: inputs, (N, ...).
        y: int64 labels, (N,).
        run_dir: where ``gw.watch`` writes the run (replaced if it exists); None: in memory.
        config: stored in the run's meta.json.

    Returns:
        the run directory (None when kept in memory).
    """
    import gradwatch as gw

    with gw.watch(model, run_dir, every=1, detail_every=1, overwrite=True, config=config) as mon:
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        mon.step(loss=loss)
    model.zero_grad(set_to_none=True)
    return Path(run_dir) if run_dir is not None else None
