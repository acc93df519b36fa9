"""The step's gradient pass: the gradients, once, for every tap that reads them.

When a recorded step's gradients are complete (the optimizer's step pre-hook, ``step()`` in
manual mode, or ``take_gradients()``), the Monitor makes one :class:`GradPass` and hands it to
each tap's :meth:`~gradwatch.monitor.tap.Tap.on_gradients`, in tap order. The
parameter-gradient tap goes first and leaves what it computed on the pass (per-parameter
norms, max |g| when requested, NaN/Inf counts), so that a later tap can read them instead of
making a second pass over the gradients.
"""

from __future__ import annotations

import torch


class GradPass:
    """The gradients of one recorded step (see the module docstring).

    Attributes:
        grads: the ``.grad`` of the watched parameters that have one (None skipped).
        pids: the parameter index of each entry of ``grads``.
        complete: whether every watched parameter has a gradient (``pids`` is every index).
        with_max: whether max |g| is taken at this step (``grad_max_abs`` is due, or a tap
            requested ``"grad_max"`` in the plan).
        norms: (len(pids),) float32 L2 norms, set by the parameter-gradient tap (or None).
        max_abs: (len(pids),) float32 max |g| when ``with_max`` (or None).
        counts: (len(pids),) float32 NaN/Inf counts when they were taken (or None).
        nonfinite: the gradients are known to hold NaN/Inf without a host sync (CPU).
    """

    __slots__ = ("complete", "counts", "grads", "max_abs", "nonfinite", "norms", "pids",
                 "with_max")

    def __init__(self, params: list[torch.Tensor], all_pids: tuple[int, ...], with_max: bool):
        grads = [p.grad for p in params]
        if any(g is None for g in grads):
            pids = tuple(i for i, g in enumerate(grads) if g is not None)
            grads = [grads[i] for i in pids]
        else:
            pids = all_pids
        self.grads = grads
        self.pids = pids
        self.complete = pids is all_pids
        self.with_max = with_max
        self.norms: torch.Tensor | None = None
        self.max_abs: torch.Tensor | None = None
        self.counts: torch.Tensor | None = None
        self.nonfinite = False
