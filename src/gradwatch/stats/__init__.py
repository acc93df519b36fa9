"""The per-layer statistics gradwatch records, and what each one needs.

Every statistic is computed in two halves. The *hot path* (called from hooks during training,
on the tensors' own device, fused where PyTorch offers a fused kernel, never synchronising with
the host) turns tensors into a small float32 *block*. The *host side* (run by the background
writer, in NumPy float64) turns blocks into per-layer values. One module per source of data:

- :mod:`gradwatch.stats.gradient`: ``grad_norm``, ``grad_rms``, ``grad_max_abs``, ``nonfinite``
- :mod:`gradwatch.stats.backprop`: ``backprop_norm``
- :mod:`gradwatch.stats.activation`: ``act_mean``, ``act_std``, ``saturated_frac``, ``dead_frac``
- :mod:`gradwatch.stats.update`: ``weight_norm``, ``update_ratio``
- :mod:`gradwatch.stats.scalar`: ``loss``, ``skipped``, ``loss_scale``, ``clip_norm``,
  ``clip_coef`` (layer ``""``)
- :mod:`gradwatch.stats.origin`: ``input_nonfinite``, ``weight_nonfinite``,
  ``forward_nonfinite``
- :mod:`gradwatch.stats.temporal`: ``time_grad_first``, ``time_grad_last``, ``time_steps``
  (recurrent layers)
- :mod:`gradwatch.stats.lr`: ``lr`` (opt-in: recorded when named in ``stats=``)
- :mod:`gradwatch.stats.precision`: ``grad_underflow_<fmt>``, ``grad_overflow_<fmt>``,
  ``bp_underflow_<fmt>``, ``bp_overflow_<fmt>`` for fp16, bf16, e4m3, e5m2, and
  ``grad_log2_max``, ``grad_log2_min`` (opt-in: ``watch(precision=...)``)
- :mod:`gradwatch.stats.sharded`: the blocks of the parameter statistics above when the
  model is sharded (FSDP2, HSDP, tensor parallel), reduced over the device mesh

Each statistic is declared once, in its module, with :func:`gradwatch.stats.registry.
define_statistic` (name, block, source, tier, doc line, DDP combine); the tuples below are
derived from that registry, in a stable order (the names of DESIGN.md first).
"""

from __future__ import annotations

from gradwatch.stats import (  # noqa: F401
    activation,
    backprop,
    gradient,
    lr,
    origin,
    precision,
    scalar,
    sharded,
    temporal,
    update,
)
from gradwatch.stats.numeric import acc_dtype, norm32
from gradwatch.stats.registry import BLOCKS, STATISTICS, Statistic

_ORDER = (
    "grad_norm", "grad_rms", "nonfinite", "backprop_norm", "loss", "grad_max_abs",
    "weight_norm", "update_ratio", "act_mean", "act_std", "saturated_frac", "dead_frac",
    "clip_norm", "clip_coef",
)  # the order of earlier versions; newer statistics follow in registration order
_NAMES = _ORDER + tuple(n for n in STATISTICS if n not in _ORDER)

#: Statistics recorded at every scheduled step ("fast" tier).
FAST_STATS = tuple(n for n in _NAMES if STATISTICS[n].tier == "fast")
#: Statistics recorded every ``detail_every``-th recorded step by default ("detail" tier).
DETAIL_STATS = tuple(n for n in _NAMES if STATISTICS[n].tier == "detail")
#: Recorded when what they describe happens (clipping ran; a step was not finite).
EVENT_STATS = tuple(n for n in _NAMES if STATISTICS[n].tier == "event")
#: Recorded only when gradwatch's clipping functions run on the watched model (layer "").
CLIP_STATS = ("clip_norm", "clip_coef")
ALL_STATS = _NAMES
#: What ``watch(stats=None)`` records: every statistic but the opt-in ones.
DEFAULT_STATS = tuple(n for n in _NAMES if STATISTICS[n].default)

#: Which statistics each data source produces (a source is computed if any is requested).
SOURCES: dict[str, tuple[str, ...]] = {}
for _n in _NAMES:
    SOURCES.setdefault(STATISTICS[_n].source, ())
    SOURCES[STATISTICS[_n].source] += (_n,)

DESCRIPTIONS = {n: STATISTICS[n].doc for n in _NAMES}

__all__ = [
    "ALL_STATS", "BLOCKS", "CLIP_STATS", "DEFAULT_STATS", "DESCRIPTIONS", "DETAIL_STATS",
    "EVENT_STATS", "FAST_STATS", "SOURCES", "STATISTICS", "Statistic", "acc_dtype", "norm32",
]
