"""The compiled path of the activation tap's rows (CPU, gradwatch's compiled kernels).

:class:`CompiledRows` writes activation statistics (sum, L2 norm, saturated count, dead units)
into rows of the activation tap's (rows, 4) buffer with the kernels of
:mod:`gradwatch.stats.native`: a list of activations in one call. While each step's forward
pass keeps the same activations as the step it learnt (the same rows and sizes, none changed
in place: the steady state of training), the whole step is checked and reduced by one call of
the kernels' ``ActPlan``, with no Python per activation.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from gradwatch.stats import native


class CompiledRows:
    """Activation rows by the compiled kernels; every method says whether it took them.

    Args:
        index: ``index(rows, device)``: the rows' index tensor (``TapContext.index``).
    """

    def __init__(self, index: Callable[[list[int], torch.device], torch.Tensor]):
        self.index = index
        self.plan: Any = None  # the kernels' ActPlan of the last step learnt
        self.counts: dict[int, list[int]] = {}  # that step's [elements, units] per row

    @staticmethod
    def kernels(buf: torch.Tensor | None) -> Any:
        """The compiled module, if it is built and the buffer is on the CPU (else None)."""
        return native.get() if buf is not None and buf.is_cpu else None

    def into(self, buf: torch.Tensor, rows: list[int], acts: list[torch.Tensor],
             codes: list[int], dims: list[int], detail: bool) -> bool:
        """The statistics of ``acts`` into ``rows`` of ``buf`` in one call."""
        nat = self.kernels(buf)
        if nat is None:
            return False
        try:
            vals = nat.act_stats(acts, codes, dims, detail)
        except (RuntimeError, TypeError):  # a strided or odd activation: the torch path
            return False
        idx = self.index(rows, buf.device) if len(rows) > 1 else None
        buf[rows[0]].copy_(vals[0]) if idx is None else buf.index_copy_(0, idx, vals)
        return True

    def learn(self, rows: list[int], acts: list[torch.Tensor], codes: list[int],
              dims: list[int], detail: bool, buf: torch.Tensor,
              counts: dict[int, list[int]]) -> None:
        """Keep this step's pass (and its rows' counts) as the plan the next steps repeat."""
        nat = self.kernels(buf)
        self.plan = None
        if nat is not None and hasattr(nat, "ActPlan"):
            try:
                self.plan = nat.ActPlan(rows, acts, codes, dims, detail)
                self.counts = {r: counts[r] for r in rows}
            except (RuntimeError, TypeError):
                self.plan = None

    def repeat(self, pend: list[tuple], detail: bool, buf: torch.Tensor | None) -> bool:
        """Reduce ``pend`` ((row, tensor, version when kept)) if it repeats the plan.

        Its rows' counts are then ``self.counts``.
        """
        return self.plan is not None and buf is not None and self.plan.run(pend, detail, buf)

    def gather(self, buf: torch.Tensor | None, rows: list[int], detail: bool) -> Any:
        """Rows ``rows`` of ``buf`` flat, norms squared, columns 2-3 NaN outside detail steps.

        None when the kernels do not take the buffer (the caller gathers with torch).
        """
        nat = self.kernels(buf)
        if nat is None or not hasattr(nat, "act_rows"):
            return None
        return nat.act_rows(buf, rows, detail)
