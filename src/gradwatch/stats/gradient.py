"""Gradient statistics: ``grad_norm``, ``grad_rms``, ``grad_max_abs``, ``nonfinite``.

Hot path (once per recorded step, over all parameter gradients of the model):

- squared L2 norms from one fused ``torch._foreach_norm`` call;
- max |g| (at the steps that record it; by default every ``detail_every``-th recorded step)
  from ``torch.aminmax`` per tensor. No fused kernel computes it cheaply on CPU
  (``_foreach_norm(ord=inf)`` is ~10x slower here, ``_foreach_abs``/``_foreach_neg`` allocate
  a copy of every gradient), so this is the one per-tensor launch in the gradient block;
- NaN/Inf counts. A norm is finite iff every entry is finite and the sum of squares does not
  overflow, so the counts are computed only when the total norm is not finite. On CPU that
  test reads a CPU scalar (no device synchronisation exists there); on accelerators the count
  is computed every step with fused kernels (``_foreach_norm(g * 0, ord=0)`` counts the
  entries that are NaN after multiplying by zero, i.e. the non-finite ones), in pieces of at
  most ``COUNT_CHUNK`` elements so the temporary never copies every gradient at once, and in
  float32 (exact for half-precision gradients too), so no host sync happens between flushes.
  A finite gradient whose float32 sum of squares overflows (entries
  near 1e20) is recorded finite: its norm is redone in float64 on that rare step (CPU).

Host side: per layer, ``grad_norm = sqrt(sum of squared norms of its parameters)``,
``grad_rms = grad_norm / sqrt(numel)``, ``grad_max_abs = max``, ``nonfinite = sum``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from gradwatch.stats.numeric import Stacked, acc_dtype, norm32
from gradwatch.stats.registry import define_block, define_statistic, keep_rank0

F32 = torch.float32


#: Tensors up to this many elements are reduced by stacking same-shape gradients and taking one
#: batched norm: on CPU ``torch._foreach_norm`` is a loop of per-tensor kernels, and for many
#: small tensors one stacked reduction is 2-9x faster (measured in benchmarks/overhead.py).
STACK_MAX_NUMEL = 16384
STACK_MIN_GROUP = 4


class NormPlan:
    """How to take the L2 norm of a fixed list of same-device tensors cheaply (built once).

    Same-shape, same-dtype small tensors are stacked into a buffer the plan keeps (allocated
    once: a fresh multi-megabyte tensor per step would cost page faults every step) and
    reduced in one kernel; the rest go through one fused ``torch._foreach_norm``. ``norms``
    returns the (P,) float32 norms in the original order.
    """

    def __init__(self, tensors: Sequence[torch.Tensor]):
        groups: dict[tuple, list[int]] = {}
        for i, t in enumerate(tensors):
            groups.setdefault((tuple(t.shape), t.dtype, t.device), []).append(i)
        self.stacked: list[list[int]] = []
        rest: list[int] = []
        for (shape, _, _), idx in groups.items():
            numel = math.prod(shape)
            if len(idx) >= STACK_MIN_GROUP and numel <= STACK_MAX_NUMEL:
                self.stacked.append(idx)
            else:
                rest.extend(idx)
        self.rest = rest
        order = [i for g in self.stacked for i in g] + rest
        self.n = len(tensors)
        self.device = tensors[0].device if tensors else None
        self.one_device = len({t.device for t in tensors}) <= 1
        self.dtype = tensors[0].dtype if tensors else None
        self.identity = order == list(range(self.n))
        self.inverse = torch.argsort(torch.tensor(order)) if order else torch.zeros(0)
        self._inverse_dev: dict[torch.device, torch.Tensor] = {}
        self._bufs: list[Stacked | None] = [None] * len(self.stacked)

    def new_buffer(self, tensors: Sequence[torch.Tensor], g: int) -> Stacked:
        """A buffer for group ``g`` of tensors like ``tensors``."""
        first = tensors[self.stacked[g][0]]
        return Stacked(len(self.stacked[g]), tuple(first.shape), first.dtype, first.device)

    def stack(self, tensors: Sequence[torch.Tensor], g: int, into: Stacked | None = None):
        """Group ``g`` of ``tensors`` as an (n, numel) tensor.

        Copied into ``into``, or into the plan's own buffer for the group (kept across steps).
        """
        idx = self.stacked[g]
        if into is None:
            into = self._bufs[g]
            if into is None or not into.fits(tensors[idx[0]]):
                into = self._bufs[g] = self.new_buffer(tensors, g)
        return into.fill([tensors[i] for i in idx]).view(len(idx), -1)

    def norms(self, tensors: Sequence[torch.Tensor], with_max: bool = False):
        """Float32 L2 norms of ``tensors`` (same shapes as at construction), original order.

        With ``with_max``, returns ``(norms, max_abs)``.
        """
        parts, maxes = [], []
        for g in range(len(self.stacked)):
            st = self.stack(tensors, g)
            parts.append(torch.linalg.vector_norm(st, dim=1, dtype=acc_dtype(st.dtype)).to(F32))
            if with_max:
                maxes.append(_row_max_abs(st))
        if self.rest:
            rest = [tensors[i] for i in self.rest]
            parts.append(rest_norms(rest))
            if with_max:
                # no fused max-abs kernel on CPU: a whole-tensor aminmax per tensor, one pass
                mm = torch.stack(
                    [x for g in rest for x in torch.aminmax(g.abs() if g.is_complex() else g)]
                ).to(F32)
                maxes.append(mm.view(-1, 2).abs().amax(1))
        out = self.order(torch.cat(parts) if len(parts) > 1 else parts[0])
        if not with_max:
            return out
        return out, self.order(torch.cat(maxes) if len(maxes) > 1 else maxes[0])

    def order(self, out: torch.Tensor) -> torch.Tensor:
        """Per-tensor values in the plan's order (stacked groups, then the rest) -> original."""
        if self.identity:
            return out
        dev = out.device
        inv = self._inverse_dev.get(dev)
        if inv is None:
            inv = self._inverse_dev[dev] = self.inverse.to(dev)
        return out.index_select(0, inv)


def rest_norms(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """Float32 L2 norms of tensors of any shapes: one fused ``torch._foreach_norm``."""
    if any(t.dtype == torch.float64 or t.is_complex() for t in tensors):
        return torch.stack([norm32(t) for t in tensors])
    return torch.stack(torch._foreach_norm(tensors, 2, dtype=F32))


def _row_max_abs(st: torch.Tensor) -> torch.Tensor:
    """Largest |x| of each row of a (n, m) tensor, float32.

    ``amax`` and ``amin`` along a dimension are two vectorised passes; ``torch.aminmax`` with
    ``dim=`` and ``abs().amax()`` are 10-16x slower on CPU (measured, 200 x 4096 float32).
    """
    if st.is_complex():
        return st.abs().amax(dim=1).to(F32)
    return torch.maximum(st.amax(dim=1), st.amin(dim=1).neg_()).to(F32)


def grad_block(
    grads: Sequence[torch.Tensor], with_max: bool = True, plan: NormPlan | None = None
) -> tuple[torch.Tensor, bool]:
    """Return ``(block, has_counts)`` for the given gradients (hot path).

    ``block`` is float32: the P norms, then (``with_max``) the P max-abs values, then (when
    ``has_counts``) the P non-finite counts. All gradients must live on one device. ``plan``
    (a :class:`NormPlan` built for these shapes) makes the norms cheaper.
    """
    if plan is None:
        plan = NormPlan(grads)
    if with_max:
        norms, maxabs = plan.norms(grads, with_max=True)  # (P,), (P,)
        parts = [norms, maxabs]
    else:
        norms = plan.norms(grads)
        parts = [norms]
    if norms.device.type == "cpu":
        # CPU: reading a CPU scalar costs no synchronisation; a finite total means every
        # entry is finite (a NaN or Inf entry makes its norm non-finite), so counting is
        # needed only on the rare non-finite step.
        if math.isfinite(norms.sum().item()):
            return (torch.cat(parts) if len(parts) > 1 else norms), False
        counts = torch.stack([torch.isfinite(g).logical_not_().sum() for g in grads]).to(F32)
        parts[0] = _unoverflow(norms, counts, grads)
    else:
        # accelerators: counted every step (no host sync to test the total first)
        counts = nonfinite_counts(grads)
    parts.append(counts)
    return torch.cat(parts), True


#: Elements per piece when counting non-finite entries: bounds the temporary (64 MiB of
#: float32) and keeps each partial count exact in float32 (below 2**24).
COUNT_CHUNK = 1 << 24


def nonfinite_counts(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """(P,) float32 counts of NaN/Inf entries per tensor, on their device, without a host sync.

    ``x * 0`` is 0 where x is finite and NaN where it is NaN or +-Inf, so the L0 "norm" of it
    counts the non-finite entries: one fused multiply and one fused count per piece. The
    tensors go through in pieces of at most ``COUNT_CHUNK`` elements (a large tensor as views
    of its flat storage), so the temporary never holds a copy of every gradient at once;
    counts are accumulated in float32, exact per piece, for half-precision gradients too.
    """
    pieces: list[torch.Tensor] = []  # views, in order
    owner: list[int] = []  # the tensor each piece belongs to
    for i, t in enumerate(tensors):
        if t.numel() > COUNT_CHUNK and t.is_contiguous():
            parts = t.view(-1).split(COUNT_CHUNK)
        else:
            parts = (t,)
        pieces.extend(parts)
        owner.extend([i] * len(parts))
    counts: list[torch.Tensor] = []
    batch: list[torch.Tensor] = []
    size = 0
    for piece in pieces:
        batch.append(piece)
        size += piece.numel()
        if size >= COUNT_CHUNK:
            counts += torch._foreach_norm(torch._foreach_mul(batch, 0.0), 0, dtype=F32)
            batch, size = [], 0
    if batch:
        counts += torch._foreach_norm(torch._foreach_mul(batch, 0.0), 0, dtype=F32)
    if len(pieces) == len(tensors):
        return torch.stack(counts)
    per_tensor: list[torch.Tensor] = []
    j = 0
    while j < len(pieces):  # pieces of one tensor are adjacent: add them up on the device
        k = j
        while k + 1 < len(pieces) and owner[k + 1] == owner[j]:
            k += 1
        per_tensor.append(counts[j] if k == j else torch.stack(counts[j : k + 1]).sum())
        j = k + 1
    return torch.stack(per_tensor)


def _unoverflow(norms: torch.Tensor, counts: torch.Tensor, grads: Sequence[torch.Tensor]):
    """Norms of finite gradients whose float32 sum of squares overflowed, redone in float64.

    A gradient with entries near 1e20 is finite, but its squares overflow float32: the norm
    would read ``inf`` next to ``nonfinite = 0``. The norm itself (~1e20) fits in float32.
    """
    bad = (~torch.isfinite(norms)) & (counts == 0)
    if not bool(bad.any()):
        return norms
    norms = norms.clone()
    for i in torch.nonzero(bad).flatten().tolist():
        norms[i] = torch.linalg.vector_norm(grads[i], dtype=torch.float64).to(F32)
    return norms


def decode_grad(
    values: np.ndarray,
    has_counts: bool,
    has_max: bool,
    param_ids: Sequence[int],
    layer_params: dict[int, list[int]],
    numel: np.ndarray,
) -> dict[str, tuple[list[int], np.ndarray]]:
    """Host side: blocks of many steps -> per-layer statistics.

    Args:
        values: (steps, P to 3P) float array of stacked blocks.
        has_counts: whether the non-finite counts part is present.
        has_max: whether the max-abs part is present.
        param_ids: the model parameter index of each of the P columns.
        layer_params: layer index -> model parameter indices it owns.
        numel: number of elements of each model parameter.

    Returns:
        stat name -> (layer indices, (steps, layers) values).
    """
    p = len(param_ids)
    norms = values[:, :p]
    maxabs = values[:, p : 2 * p] if has_max else None
    off = 2 * p if has_max else p
    counts = values[:, off : off + p] if has_counts else None
    col = {pid: j for j, pid in enumerate(param_ids)}
    layers, gn, gr, gm, nf = [], [], [], [], []
    for li, pids in layer_params.items():
        cols = [col[q] for q in pids if q in col]
        if not cols:
            continue
        layers.append(li)
        norm = np.sqrt(np.sum(norms[:, cols].astype(np.float64) ** 2, axis=1))
        gn.append(norm)
        gr.append(norm / np.sqrt(float(sum(numel[param_ids[c]] for c in cols))))
        if maxabs is not None:
            gm.append(np.max(maxabs[:, cols], axis=1))
        nf.append(np.sum(counts[:, cols], axis=1) if counts is not None else np.zeros(len(norm)))
    if not layers:
        return {}
    stack = lambda xs: np.stack(xs, axis=1)  # noqa: E731
    out = {
        "grad_norm": (layers, stack(gn)),
        "grad_rms": (layers, stack(gr)),
        "nonfinite": (layers, stack(nf)),
    }
    if gm:
        out["grad_max_abs"] = (layers, stack(gm))
    return out


def _decode_block(values: np.ndarray, key, layout) -> dict[str, tuple[list[int], np.ndarray]]:
    pids, has_counts, has_max = key
    return decode_grad(values, has_counts, has_max, pids, layout.layer_params, layout.numel)


define_block(
    "grad",
    _decode_block,
    keep_rank0,
    "per parameter: L2 norms, then max |g| (when taken), then NaN/Inf counts (when any)",
)
_SAME = "DDP has averaged the gradients, every rank holds the same: rank 0's value"
define_statistic(
    "grad_norm", "grad", "grad", "fast",
    "L2 norm of the layer's parameter gradients", _SAME,
)
define_statistic(
    "grad_rms", "grad", "grad", "fast",
    "root mean square of the layer's parameter gradients (grad_norm / sqrt(numel))", _SAME,
)
define_statistic(
    "nonfinite", "grad", "grad", "fast",
    "count of NaN/Inf entries in the layer's parameter gradients", _SAME,
)
define_statistic(
    "grad_max_abs", "grad", "grad", "detail",
    "largest absolute parameter gradient in the layer", _SAME,
)
