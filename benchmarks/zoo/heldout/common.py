"""What the held-out families share: optimizers, image cases, and the case-and-probe pair."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch

from ..case import Case, Train
from ..data import image_batch
from ..mlp import CHANCE
from .measure import Probe


@dataclass(frozen=True)
class Entry:
    """A held-out case and where its truth was measured."""

    case: Case
    probe: Probe


def adamw(lr: float, wd: float = 0.05, betas=(0.9, 0.999)):
    """``model -> AdamW`` (Loshchilov & Hutter 2019), the optimizer of modern vision and LMs."""
    return lambda model: torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=wd,
                                           betas=betas)


def sgd(lr: float, momentum: float = 0.9, wd: float = 0.0, nesterov: bool = False):
    """``model -> SGD`` with momentum and weight decay (the CIFAR ResNet recipe)."""
    return lambda model: torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum,
                                         weight_decay=wd, nesterov=nesterov)


def image_case(name: str, family: str, build, expect_init: str, expect_run: str, source: str,
               train: dict, probe: Probe, *, size: int = 32, why: str = "",
               measured: dict | None = None, budget_s: float = 20.0) -> Entry:
    """A digit-image classifier: checked on 8 images, trained on batches of ``train["batch"]``.

    ``train`` holds the :class:`Train` fields (``steps``, ``optimizer``, ``outcome``, ...)
    plus ``batch`` (the batch size, default 16) and ``size`` (the training images' side,
    default ``size``).
    """
    tr = dict(train)
    bs = tr.pop("batch", 16)
    tsize = tr.pop("size", size)
    tr.setdefault("baseline", CHANCE)
    case = Case(name=name, family=family, model=build,
                batch=partial(image_batch, 10_000, size=size, batch=8),
                expect_init=expect_init, expect_run=expect_run, source=source, why=why,
                train=Train(batch=partial(image_batch, size=tsize, batch=bs), **tr),
                measured=measured or {}, budget_s=budget_s)
    return Entry(case, probe)

