"""Low-precision headroom: what a cast to fp16, bf16, e4m3 or e5m2 would flush or overflow.

Statistics (per layer, detail tier, opt-in: ``watch(..., precision="fp16")`` or named in
``stats=``), computed from the float32 values *as the cast sees them*: under a GradScaler
the parameter gradients (read unscaled, as ``GradScaler.step`` leaves them) are multiplied
by the current loss scale in float32, and the back-propagated signal is read as backward
produced it (already scaled); without a GradScaler, ``watch(loss_scale=S)`` (and
``gw.check(..., loss_scale=S)``) reads both as if the loss were multiplied by ``S``. For ``fmt`` in
:data:`FORMATS`:

- ``grad_underflow_<fmt>``: the fraction of the layer's parameter-gradient entries (weights
  and biases together) that are nonzero and become zero when cast to the format;
- ``grad_overflow_<fmt>``: the fraction that are NaN/Inf or round, to nearest even at the
  format's precision, to a magnitude above its largest finite value. In fp16, bf16 and e5m2
  these are exactly the entries the cast turns into inf/NaN. ``float8_e4m3fn`` has no
  infinity: PyTorch's cast saturates them to ±448 (NaN stays NaN), so for e4m3 they are the
  entries with ``|x| > 464`` (464, halfway between 448 and the next binade step 480, rounds
  to even, 448) and the NaN/Inf ones;
- ``bp_underflow_<fmt>`` and ``bp_overflow_<fmt>``: the same for the back-propagated signal
  ``d loss / d output`` of the layer (every call of the layer in the step pooled);
- ``grad_log2_max`` and ``grad_log2_min``: log2 of the largest and of the smallest nonzero
  ``|g|`` of the layer (at the loss scale), to draw each layer's range against the formats'
  limits (NaN where every entry is zero).

Hot path: no cast at all. Round-to-nearest-even flushes ``x`` to zero exactly when
``|x| <= min_subnormal / 2`` (the tie rounds to the even zero), and overflows exactly when
``|x| >= max + ulp/2`` where the largest finite value has an odd significand (fp16, bf16,
e5m2: the tie rounds up to inf) and ``|x| > max + ulp/2`` where it is even (e4m3fn). The
nine thresholds of the four formats are sorted into one boundary vector (:data:`BOUNDS`), so
one ``torch.bucketize`` and one ``torch.bincount`` give every format's counts at once: per
same-shape group of parameter gradients (stacked), or per tensor. NaN and Inf fall in the
top bin (overflow in every format). ``tests/stats/test_precision.py`` checks each threshold
against real casts, at the boundaries and one float32 step either side.

Blocks: ``prec_grad`` (per parameter: the ten bin counts, max |x|, min nonzero |x|) and
``prec_bp`` (per layer call: the ten bin counts); counts are float32, exact below 2**24
entries per tensor. Under DDP the parameter gradients are the same on every rank (rank 0's
block); each rank casts its own back-propagated signal, so the ranks' counts add up.

References:
    Micikevicius et al., "Mixed Precision Training", ICLR 2018 (Fig. 3: the histogram of
    activation gradients against fp16's range).
    Blake et al., "Unit Scaling", ICML 2023 (per-tensor scale analysis).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from gradwatch.stats.registry import define_block, define_statistic, keep_rank0, sum_over_ranks

F32 = torch.float32

#: The formats, their PyTorch dtype, largest finite value and smallest subnormal.
FORMATS: dict[str, dict[str, Any]] = {
    "fp16": {"dtype": torch.float16, "max": 65504.0, "min_sub": 2.0**-24},
    "bf16": {"dtype": torch.bfloat16, "max": float(torch.finfo(torch.bfloat16).max),
             "min_sub": 2.0**-133},
    "e4m3": {"dtype": torch.float8_e4m3fn, "max": 448.0, "min_sub": 2.0**-9},
    "e5m2": {"dtype": torch.float8_e5m2, "max": 57344.0, "min_sub": 2.0**-16},
}


def _below(x: float) -> float:
    """The float32 just below ``x``."""
    t = torch.tensor(x, dtype=F32)
    return float(torch.nextafter(t, torch.zeros((), dtype=F32)))


#: Sorted boundaries: |x| <= BOUNDS[i] falls in bin <= i (torch.bucketize, right=False).
#: Bin 0: zero. Bins 1-4: flushed by bf16, fp16, e5m2, e4m3 and every format above in this
#: list (|x| <= 2**-134, 2**-25, 2**-17, 2**-10). Bin 5: fine in every format. Bins 6-9:
#: overflow in e4m3 (|x| > 464), e5m2 (>= 61440), fp16 (>= 65520), bf16 (>= 2**128 - 2**119),
#: and every format before in this list; NaN and Inf fall in bin 9.
BOUNDS_LIST = (
    0.0,
    2.0**-134,
    2.0**-25,
    2.0**-17,
    2.0**-10,
    464.0,
    _below(61440.0),
    _below(65520.0),
    _below(2.0**128 - 2.0**119),
)
NBINS = len(BOUNDS_LIST) + 1
#: Per format: the bins that underflow (1..k) and that overflow (j..9).
UNDER_TOP = {"bf16": 1, "fp16": 2, "e5m2": 3, "e4m3": 4}
OVER_FROM = {"e4m3": 6, "e5m2": 7, "fp16": 8, "bf16": 9}

GRAD_STATS = tuple(f"grad_{k}_{f}" for f in FORMATS for k in ("underflow", "overflow"))
BP_STATS = tuple(f"bp_{k}_{f}" for f in FORMATS for k in ("underflow", "overflow"))
RANGE_STATS = ("grad_log2_max", "grad_log2_min")
#: Every precision statistic (what ``watch(precision=...)`` records).
PRECISION_STATS = GRAD_STATS + BP_STATS + RANGE_STATS

#: Same-shape gradients up to this many entries are stacked (as in the gradient norms).
STACK_MAX_NUMEL = 16384

_BOUNDS: dict[torch.device, torch.Tensor] = {}


def float32_bits(x: float) -> int:
    """The IEEE-754 bits of ``x`` as a float32 (``x`` must be exact in float32), as an int32.

    Integer arithmetic only: a conversion by the FPU (``torch.tensor(x, dtype=float32)``,
    numpy, ``struct``) turns a subnormal into 0 while ``torch.set_flush_denormal(True)`` is
    on, and :data:`BOUNDS_LIST` holds one (2**-134, bf16's flush line).
    """
    if x == 0:
        return 0
    m, e = math.frexp(abs(x))  # |x| = m * 2**e, 0.5 <= m < 1 (x is a normal float64)
    q = int(m * 2**24)  # 24-bit significand: |x| = q * 2**(e - 24)
    biased = e + 126
    if biased >= 1:  # normal float32
        bits = (biased << 23) | (q - 2**23)
    else:  # subnormal: |x| = mantissa * 2**-149
        shift = 1 - biased
        if q & ((1 << shift) - 1):
            raise ValueError(f"{x!r} is not exact in float32")
        bits = q >> shift
    if q != m * 2**24 or bits >= 0x7F800000:
        raise ValueError(f"{x!r} is not a finite float32")
    return -(2**31) + bits if x < 0 else bits


def bounds(device: torch.device) -> torch.Tensor:
    """:data:`BOUNDS_LIST` as a float32 tensor on ``device`` (made once per device).

    Made from the values' bits, so that a first call while subnormals are flushed
    (``torch.set_flush_denormal(True)``) does not cache a 0 in place of 2**-134 for the
    rest of the process.
    """
    b = _BOUNDS.get(device)
    if b is None:
        bits = torch.tensor([float32_bits(v) for v in BOUNDS_LIST], dtype=torch.int32)
        b = _BOUNDS[device] = bits.view(F32).to(device)
    return b


def magnitudes(t: torch.Tensor, scale: torch.Tensor | float) -> torch.Tensor:
    """``fl32(|t| * scale)``: a new float32 tensor (the values the cast would see)."""
    a = t.detach().to(F32).abs() if t.dtype != F32 else t.detach().abs()
    if not (isinstance(scale, float) and scale == 1.0):
        a.mul_(scale)
    return a


def bin_counts(a: torch.Tensor, rows: int = 1) -> torch.Tensor:
    """(rows, NBINS) float32 counts of the magnitudes ``a`` viewed as ``rows`` rows."""
    idx = torch.bucketize(a.reshape(rows, -1), bounds(a.device))
    if rows > 1:
        idx += torch.arange(0, rows * NBINS, NBINS, device=a.device).unsqueeze(1)
    return torch.bincount(idx.reshape(-1), minlength=rows * NBINS).view(rows, NBINS).to(F32)


def grad_rows(a: torch.Tensor, rows: int = 1) -> torch.Tensor:
    """(rows, NBINS + 2) float32: bin counts, max and min nonzero of ``rows`` rows of ``a``."""
    a2 = a.reshape(rows, -1)
    counts = bin_counts(a2, rows)
    mx = a2.amax(dim=1, keepdim=True)
    mn = torch.where(a2 > 0, a2, torch.inf).amin(dim=1, keepdim=True)
    return torch.cat([counts, mx, mn], dim=1)


class PrecisionPlan:
    """Same-shape gradients of a fixed list, stacked into one buffer per group (built once).

    Groups of two or more tensors of up to :data:`STACK_MAX_NUMEL` entries are stacked into a
    buffer the plan keeps and counted with one bucketize; larger tensors, one by one (their
    kernels are long enough that a launch each costs little, and no copy of them is kept).
    """

    def __init__(self, tensors: Sequence[torch.Tensor]):
        groups: dict[tuple, list[int]] = {}
        for i, t in enumerate(tensors):
            groups.setdefault((tuple(t.shape), t.dtype, t.device), []).append(i)
        self.groups = [idx for k, idx in groups.items()
                       if len(idx) > 1 and math.prod(k[0]) <= STACK_MAX_NUMEL]
        grouped = {i for idx in self.groups for i in idx}
        self.single = [i for i in range(len(tensors)) if i not in grouped]
        order = [i for g in self.groups for i in g] + self.single
        self.n = len(tensors)
        self.key = [(tuple(t.shape), t.dtype, t.device) for t in tensors]
        self.inverse = torch.argsort(torch.tensor(order)) if order else torch.zeros(0)
        self.identity = order == list(range(self.n))
        self._bufs: list[torch.Tensor | None] = [None] * len(self.groups)

    def fits(self, tensors: Sequence[torch.Tensor]) -> bool:
        """Whether ``tensors`` have the shapes, dtypes and devices the plan was made for."""
        return len(tensors) == self.n and all(
            (tuple(t.shape), t.dtype, t.device) == k
            for t, k in zip(tensors, self.key, strict=True))

    def rows(self, tensors: Sequence[torch.Tensor], scale: torch.Tensor | float) -> torch.Tensor:
        """(n, NBINS + 2) rows of the gradients, in their order: one bucketize per group."""
        parts = []
        for gi, idx in enumerate(self.groups):
            buf = self._bufs[gi]
            first = tensors[idx[0]]
            if buf is None:
                buf = self._bufs[gi] = torch.empty((len(idx), *first.shape), dtype=F32,
                                                   device=first.device)
            if first.dtype == F32:
                torch.stack([tensors[i].detach() for i in idx], out=buf)
            else:
                buf.copy_(torch.stack([tensors[i].detach() for i in idx]))
            buf.abs_()
            if not (isinstance(scale, float) and scale == 1.0):
                buf.mul_(scale)
            parts.append(grad_rows(buf, len(idx)))
        for i in self.single:
            parts.append(grad_rows(magnitudes(tensors[i], scale)))
        dev = parts[0].device
        out = torch.cat([p.to(dev) for p in parts]) if len(parts) > 1 else parts[0]
        if not self.identity:
            out = out[self.inverse.to(out.device)]
        return out

    def release(self) -> None:
        """Drop the stacked buffers."""
        self._bufs = [None] * len(self.groups)


# -- host side ----------------------------------------------------------------------------
def fractions(counts: np.ndarray, wanted: Sequence[str], prefix: str) -> dict[str, np.ndarray]:
    """Per-format fractions from (steps, layers, NBINS) counts, for the wanted names only."""
    total = counts.sum(axis=2)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = {}
        for fmt in FORMATS:
            for kind in ("underflow", "overflow"):
                name = f"{prefix}_{kind}_{fmt}"
                if name not in wanted:
                    continue
                sel = (slice(1, UNDER_TOP[fmt] + 1) if kind == "underflow"
                       else slice(OVER_FROM[fmt], NBINS))
                out[name] = counts[:, :, sel].sum(axis=2) / total
    return out


def decode_grad(values: np.ndarray, key: Any, layout: Any) -> dict:
    """(steps, P * (NBINS + 2)) -> per-layer gradient fractions and log2 range."""
    pids, wanted = key
    v = values.astype(np.float64).reshape(len(values), len(pids), NBINS + 2)
    col = {p: i for i, p in enumerate(pids)}
    layers, counts, mx, mn = [], [], [], []
    for li, lp in layout.layer_params.items():
        cols = [col[p] for p in lp if p in col]
        if not cols:
            continue
        layers.append(li)
        counts.append(v[:, cols, :NBINS].sum(axis=1))
        mx.append(v[:, cols, NBINS].max(axis=1))
        mn.append(v[:, cols, NBINS + 1].min(axis=1))
    if not layers:
        return {}
    out = {k: (layers, f) for k, f in fractions(np.stack(counts, axis=1), wanted,
                                                "grad").items()}
    with np.errstate(divide="ignore", invalid="ignore"):
        hi = np.stack(mx, axis=1)
        lo = np.stack(mn, axis=1)
        if "grad_log2_max" in wanted:
            out["grad_log2_max"] = (layers, np.where(hi > 0, np.log2(hi), np.nan))
        if "grad_log2_min" in wanted:
            out["grad_log2_min"] = (layers, np.where(np.isfinite(lo) & (lo > 0), np.log2(lo),
                                                     np.nan))
    return out


def decode_bp(values: np.ndarray, key: Any, layout: Any) -> dict:
    """(steps, calls * NBINS) -> per-layer back-propagated fractions (calls pooled)."""
    call_layers, wanted = key
    v = values.astype(np.float64).reshape(len(values), len(call_layers), NBINS)
    cl = np.asarray(call_layers)
    layers = sorted(set(call_layers))
    counts = np.stack([v[:, cl == li].sum(axis=1) for li in layers], axis=1)
    return {k: (layers, f) for k, f in fractions(counts, wanted, "bp").items()}


define_block("prec_grad", decode_grad, keep_rank0,
             "per parameter: counts of |g| * scale in the bins of BOUNDS, max, min nonzero; "
             "key: (parameter ids, wanted statistics)")
define_block("shard_prec_grad", decode_grad, keep_rank0,
             "sharded parameters: prec_grad rows reduced over the mesh within the step (counts "
             "added, copies counted once; max and min nonzero reduced); key: as prec_grad",
             mesh=lambda key: (("sum", NBINS), ("max", 1), ("min", 1)) * len(key[0]))
define_block("prec_bp", decode_bp, sum_over_ranks,
             "per layer call: counts of |d loss / d output| in the bins of BOUNDS; key: "
             "(layer of each call, wanted statistics)")

_WHAT = {"underflow": "nonzero and flushed to zero by a cast to",
         "overflow": "NaN/Inf or rounded beyond the largest finite value of"}
for _fmt in FORMATS:
    for _kind in ("underflow", "overflow"):
        define_statistic(
            f"grad_{_kind}_{_fmt}", "prec_grad", "precision", "detail",
            f"fraction of the layer's parameter-gradient entries {_WHAT[_kind]} {_fmt} at "
            "the loss scale (opt-in: watch(precision=...))",
            "rank 0's value (DDP gradients are the same on every rank)", default=False)
        define_statistic(
            f"bp_{_kind}_{_fmt}", "prec_bp", "precision", "detail",
            f"fraction of the entries of d loss / d output {_WHAT[_kind]} {_fmt}, as backward "
            "produced them (opt-in: watch(precision=...))",
            "the ranks' counts added (each rank casts its own signal)", default=False)
define_statistic(
    "grad_log2_max", "prec_grad", "precision", "detail",
    "log2 of the largest |g| of the layer at the loss scale (opt-in: watch(precision=...))",
    "rank 0's value", default=False)
define_statistic(
    "grad_log2_min", "prec_grad", "precision", "detail",
    "log2 of the smallest nonzero |g| of the layer at the loss scale (NaN if all are zero; "
    "opt-in: watch(precision=...))",
    "rank 0's value", default=False)
