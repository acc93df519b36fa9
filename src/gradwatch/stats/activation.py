"""Activation statistics: ``act_mean``, ``act_std``, ``saturated_frac``, ``dead_frac``.

Kept for activation modules (nn.ReLU, nn.Tanh, nn.Sigmoid, ...), attached to the layer that ran
just before the activation. Each activation module owns one row of a preallocated (modules, 4)
float32 device buffer, written on its first call of the step and added to on later calls
(micro-batches, shared modules), so the Monitor's memory does not grow with the number of
calls. Where the reduction happens:

- small activations (up to ``STACK_ACT_MAX`` elements) are reduced together when the model's
  forward pass returns: the hook only keeps a reference, and :func:`reduce_stacked` stacks the
  same-shape ones into a buffer allocated once and reduces each statistic in one kernel for
  all of them (on a 200-layer MLP, ten times cheaper than a few kernels per activation). The
  references live until the end of the forward pass that made them, no longer: the next
  layer keeps these tensors for its own backward anyway;
- larger ones are reduced inside the activation's forward hook (``out=`` into the row), where
  the kernels' own work outweighs their launch.

The statistics:

- sum and sum of squares (the latter as an L2 norm, squared on the device when the step is
  recorded; both accumulated in float32 over the tensor and combined in float64 on the host):
  ``act_mean = S / n``, ``act_std = sqrt(SS / n - mean^2)`` (population std over every
  element of the batch). This is about ten times cheaper here than ``torch.var_mean``;
- ``saturated_frac`` (sigmoid- and tanh-like activations): the fraction of outputs in the flat
  tails, where the derivative is at most ~6% (tanh: |a| > 0.97) or ~12% (sigmoid: a < 0.03 or
  a > 0.97) of its maximum;
- ``dead_frac`` (ReLU-like activations): the fraction of units that are never positive over
  the batch and every position. A unit is a channel (dim 1) after a convolution
  (``nn.Conv1d/2d/3d`` and transposed ones), the last-dim feature of other outputs with 3 or
  more dimensions (``(B, T, C)`` sequences) and the feature of ``(B, F)`` outputs. With several
  calls in one step the dead units and the units are summed over the calls.

References:
    Glorot & Bengio 2010 (saturation of sigmoid and tanh units); Lu et al., "Dying ReLU and
    Initialization", 2019 (dead units).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from gradwatch.stats.numeric import acc_dtype
from gradwatch.stats.registry import define_block, define_statistic

F32 = torch.float32

#: Threshold on |a - centre| above which a unit counts as saturated, per family.
SATURATION = {"tanh": (0.0, 0.97), "sigmoid": (0.5, 0.47)}
FAMILY_CODE = {"sigmoid": 1, "tanh": 2, "rectifier": 3, "other": 0}


_DIMS: dict[int, tuple[int, ...]] = {}


def all_dims(a: torch.Tensor) -> tuple[int, ...]:
    """``tuple(range(a.dim()))``, made once per number of dimensions."""
    dims = _DIMS.get(a.dim())
    if dims is None:
        dims = _DIMS[a.dim()] = tuple(range(a.dim()))
    return dims


def unit_dim(ndim: int, channels_first: bool) -> int:
    """The dimension that indexes units (see the module docstring)."""
    return 1 if (channels_first or ndim == 2) else ndim - 1


def detail_into(
    a: torch.Tensor, fam: str, channels_first: bool, sat: torch.Tensor, dead: torch.Tensor
) -> int:
    """Write one call's saturated count into ``sat`` or its dead units into ``dead``.

    ``sat`` and ``dead`` are 0-d float32 views of the Monitor's buffer, written in place.
    Returns the number of units (1 where neither applies).
    """
    if fam in SATURATION:
        centre, thr = SATURATION[fam]
        dev = a.abs() if centre == 0.0 else (a - centre).abs_()
        torch.sum(dev > thr, dim=tuple(range(a.dim())), dtype=F32, out=sat)
        return 1
    if fam == "rectifier" and a.dim() >= 2:
        unit = unit_dim(a.dim(), channels_first)
        alive = a.amax(dim=tuple(d for d in range(a.dim()) if d != unit)) > 0  # (units,)
        torch.sum(alive.logical_not_(), dim=0, dtype=F32, out=dead)
        return a.shape[unit]
    return 1


#: Activations up to this many elements are reduced together at the end of the forward pass.
STACK_ACT_MAX = 1 << 16


def saturated_counts(st: torch.Tensor, fam: str, dims: tuple[int, ...]) -> torch.Tensor:
    """Per-row count of saturated entries of a stacked (n, ...) ``st``, float32 (n,).

    Overwrites ``st`` (a copy the caller owns): |a - centre| - thr, clipped at 0, sign: 1 where
    saturated. Four vectorised passes; a boolean mask and its sum are 2-3x slower on CPU.
    NaN entries count as not saturated (``nansum``), as in :func:`detail_into`.
    """
    centre, thr = SATURATION[fam]
    if centre != 0.0:
        st.sub_(centre)
    st.abs_().sub_(thr).relu_().sign_()
    return torch.nansum(st, dim=dims, dtype=F32)


def dead_counts(st: torch.Tensor, unit: int) -> torch.Tensor:
    """Per-row count of units of a stacked (n, ...) ``st`` never positive, float32 (n,)."""
    others = tuple(d for d in range(1, st.dim()) if d != unit)
    alive = st.amax(dim=others) > 0  # (n, units)
    return alive.logical_not_().sum(dim=1, dtype=F32)


def reduce_stacked(
    st: torch.Tensor, fam: str, channels_first: bool, detail: bool
) -> tuple[torch.Tensor, ...]:
    """(sums, L2 norms, saturated counts or None, dead units or None) of each row of ``st``.

    ``st`` is (n, *shape): n same-shape activations stacked into a copy the caller owns; the
    saturation count overwrites it.
    """
    dims = tuple(range(1, st.dim()))
    sums = torch.sum(st, dim=dims, dtype=F32)
    norms = torch.linalg.vector_norm(st, dim=dims, dtype=F32)
    sat = dead = None
    if detail:
        if fam in SATURATION:
            sat = saturated_counts(st, fam, dims)
        elif fam == "rectifier" and st.dim() >= 3:
            dead = dead_counts(st, 1 + unit_dim(st.dim() - 1, channels_first))
    return sums, norms, sat, dead


def applicable(fam: str) -> tuple[bool, bool]:
    """Whether (saturated_frac, dead_frac) apply to an activation family."""
    return fam in SATURATION, fam == "rectifier"


def act_row(a: torch.Tensor, fam: str, channels_first: bool, detail: bool):
    """One call's (4,) float32 row [sum, sum of squares, saturated, dead] and its units.

    The slow path (second and later calls of a step, unusual dtypes); the first call of a
    step writes the same numbers into the Monitor's buffer in place.
    """
    acc = acc_dtype(a.dtype)
    s = a.sum(dtype=acc).to(F32)
    ss = (torch.linalg.vector_norm(a, dtype=acc) ** 2).to(F32)
    nan = torch.full_like(s, float("nan"))
    row = torch.stack([s, ss, nan, nan])
    units = detail_into(a, fam, channels_first, row[2], row[3]) if detail else 1
    return row, units


def decode_act(
    values: np.ndarray, calls: Sequence[tuple[int, int, int, int]]
) -> dict[str, tuple[list[int], np.ndarray]]:
    """Host side: (steps, rows*4) -> per-layer activation statistics.

    ``calls`` holds, per row (one activation module's calls in the step, summed), (layer
    index, family code, numel, units): elements and units summed over the calls.
    """
    v = values.astype(np.float64).reshape(values.shape[0], len(calls), 4)
    layer_of = np.array([c[0] for c in calls])
    numel = np.array([c[2] for c in calls], dtype=np.float64)
    units = np.array([c[3] for c in calls], dtype=np.float64)
    out: dict[str, tuple[list[int], list[np.ndarray]]] = {}

    def put(stat: str, li: int, val: np.ndarray) -> None:
        out.setdefault(stat, ([], []))
        out[stat][0].append(li)
        out[stat][1].append(val)

    for li in sorted(set(layer_of.tolist())):
        m = layer_of == li
        n = numel[m].sum()
        s, ss = v[:, m, 0].sum(axis=1), v[:, m, 1].sum(axis=1)
        mean = s / n
        put("act_mean", li, mean)
        put("act_std", li, np.sqrt(np.maximum(ss / n - mean**2, 0.0)))
        sat = v[:, m, 2]
        if not np.all(np.isnan(sat)):
            ok = ~np.isnan(sat[0])
            put("saturated_frac", li, sat[:, ok].sum(axis=1) / numel[m][ok].sum())
        dead = v[:, m, 3]
        if not np.all(np.isnan(dead)):
            ok = ~np.isnan(dead[0])
            put("dead_frac", li, dead[:, ok].sum(axis=1) / units[m][ok].sum())
    return {k: (ls, np.stack(vs, axis=1)) for k, (ls, vs) in out.items()}


def _combine(values, key, world: int):
    # sums, sums of squares and counts add up over ranks; so do the elements and units
    return values.sum(axis=0), tuple(
        (li, fam, numel * world, units * world) for li, fam, numel, units in key
    )


define_block(
    "act",
    lambda values, key, layout: decode_act(values, key),
    _combine,
    "per activation module: [sum, sum of squares, saturated count, dead units], (rows, 4)",
)
_SUM = "sums, sums of squares and counts add up over ranks"
define_statistic(
    "act_mean", "act", "act", "detail",
    "mean of the activation that follows the layer, over the batch", _SUM,
)
define_statistic(
    "act_std", "act", "act", "detail", "standard deviation of that activation over the batch",
    _SUM,
)
define_statistic(
    "saturated_frac", "act", "act", "detail",
    "fraction of sigmoid/tanh-like outputs in their flat tails", _SUM,
)
define_statistic(
    "dead_frac", "act", "act", "detail",
    "fraction of ReLU-like units (channels after a convolution, last-dim features of other "
    "outputs) that are never positive over the batch and every position",
    "dead units and units add up over ranks: the ranks' pooled fraction",
)
