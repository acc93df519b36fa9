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
        norms, max_abs, counts: what the parameter-gradient tap took (properties, below).
        nonfinite: the gradients are known to hold NaN/Inf without a host sync (CPU).
    """

    __slots__ = ("_all", "_block", "_complete", "_grads", "_params", "_parts", "_pids",
                 "nonfinite", "with_max")

    def __init__(self, params: list[torch.Tensor], all_pids: tuple[int, ...], with_max: bool):
        # the gradients are listed when a tap first asks (a compiled pass reads them itself)
        self._params, self._all = params, all_pids
        self._grads: list[torch.Tensor] | None = None
        self._pids: tuple[int, ...] | None = None
        self._complete = False
        self.with_max = with_max
        self._block: torch.Tensor | None = None
        self._parts = (False, False)
        self.nonfinite = False

    def _list(self) -> None:
        grads = [p.grad for p in self._params]
        pids = self._all
        if any(g is None for g in grads):
            pids = tuple(i for i, g in enumerate(grads) if g is not None)
            grads = [grads[i] for i in pids]
        self._grads, self._pids, self._complete = grads, pids, pids is self._all

    @property
    def grads(self) -> list[torch.Tensor]:
        """The ``.grad`` of the watched parameters that have one (None skipped)."""
        if self._grads is None:
            self._list()
        return self._grads

    @property
    def pids(self) -> tuple[int, ...]:
        """The parameter index of each entry of ``grads``."""
        if self._pids is None:
            self._list()
        return self._pids

    @property
    def complete(self) -> bool:
        """Whether every watched parameter has a gradient (``pids`` is every index)."""
        if self._pids is None:
            self._list()
        return self._complete

    def every_one(self) -> None:
        """Every watched parameter is known to have a gradient (read without listing them)."""
        if self._pids is None:
            self._pids, self._complete = self._all, True

    def keep(self, block: torch.Tensor, with_max: bool, has_counts: bool) -> None:
        """The parameter-gradient tap's block: P norms, [P max |g|], [P NaN/Inf counts]."""
        self._block, self._parts = block, (with_max, has_counts)

    def _part(self, i: int) -> torch.Tensor | None:
        b = self._block
        if b is None:
            return None
        n = len(self.pids)
        return b[i * n : (i + 1) * n]

    @property
    def norms(self) -> torch.Tensor | None:
        """(len(pids),) float32 L2 norms (None if the parameter-gradient tap did not run)."""
        return self._part(0)

    @property
    def max_abs(self) -> torch.Tensor | None:
        """(len(pids),) float32 max |g| when ``with_max`` (else None)."""
        return self._part(1) if self._parts[0] else None

    @property
    def counts(self) -> torch.Tensor | None:
        """(len(pids),) float32 NaN/Inf counts when they were taken (else None)."""
        return self._part(1 + self._parts[0]) if self._parts[1] else None
