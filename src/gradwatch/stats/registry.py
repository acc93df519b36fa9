"""One definition per statistic: the registry the Monitor, the writer and the DDP combine read.

Statistics are produced in *blocks*. A block is what the hot path leaves on the device for one
step: one small float32 tensor (the on-device reduction) plus a hashable *key* that says how
to read it (which parameters, which layers, which calls). A :class:`BlockKind` declares, once,

- ``decode``: how the host turns the stacked blocks of many steps into per-layer values
  (``(values (steps, n), key, layout) -> {stat: (layer indices, (steps, layers) values)}``);
- ``combine``: how the blocks of W ranks become one under DistributedDataParallel
  (``(values (W, n), key, W) -> (values (n,), key)``);
- ``mesh`` (optional): how a block of this kind is reduced over the ranks of a device mesh
  *within the step*, when its tensors are sharded (FSDP2, HSDP, tensor parallel):
  ``key -> ((op, count), ...)`` segments of the flattened block, ``op`` one of ``"sum"``,
  ``"max"``, ``"min"``. A tap passes them to ``Record.all_reduce``
  (:func:`mesh_segments`); the reduced block then holds the global value on every rank;

and a :class:`Statistic` declares its name, the block that yields it, the data it reads
(``source``: what the Monitor must install to get it), its tier (``fast``: every recorded
step; ``detail``: every ``detail_every``-th recorded step by default; ``event``: when what it
describes happens) and its one-line definition. Each statistic module (``gradient``,
``backprop``, ``activation``, ``update``, ``scalar``, ``origin``) registers its blocks and
statistics at import; adding a statistic to a module touches that module only.

The pattern is torchmetrics' ``add_state(..., dist_reduce_fx=...)``: a statistic states how
it reduces, the machinery loops over the declarations.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

Decoded = dict[str, tuple[list[int], np.ndarray]]

TIERS = ("fast", "detail", "event")


@dataclass(frozen=True)
class BlockKind:
    """How one kind of block is decoded on the host and combined across ranks."""

    kind: str
    decode: Callable[[np.ndarray, Any, Any], Decoded]
    combine: Callable[[np.ndarray, Any, int], tuple[np.ndarray, Any]]
    doc: str
    mesh: Callable[[Any], tuple[tuple[str, int], ...]] | None = None


@dataclass(frozen=True)
class Statistic:
    """One recorded statistic (a fixed name of DESIGN.md, or a documented addition)."""

    name: str
    block: str  # the BlockKind whose decode yields it
    source: str  # what the Monitor must install: grad, backprop, act, update, loss, ...
    tier: str  # fast | detail | event
    doc: str  # one line: the definition, as in docs/reference/statistics.md
    combine: str  # one line: how ranks are combined under DDP
    scope: str = "layer"  # "layer" (one value per layer) or "run" (layer "")
    default: bool = True  # recorded by watch(stats=None); False: only when named in stats=


BLOCKS: dict[str, BlockKind] = {}
STATISTICS: dict[str, Statistic] = {}


def define_block(
    kind: str,
    decode: Callable[[np.ndarray, Any, Any], Decoded],
    combine: Callable[[np.ndarray, Any, int], tuple[np.ndarray, Any]],
    doc: str,
    mesh: Callable[[Any], tuple[tuple[str, int], ...]] | None = None,
) -> BlockKind:
    """Register a block kind (once per kind; a second definition is a programming error).

    ``mesh``: ``key -> ((op, count), ...)``, how the kind reduces over a device mesh within
    the step (see the module docstring); None for kinds that are never mesh-reduced.
    """
    if kind in BLOCKS:
        raise AssertionError(f"block kind {kind!r} is defined twice")
    BLOCKS[kind] = BlockKind(kind, decode, combine, doc, mesh)
    return BLOCKS[kind]


def define_statistic(
    name: str,
    block: str,
    source: str,
    tier: str,
    doc: str,
    combine: str,
    scope: str = "layer",
    default: bool = True,
) -> Statistic:
    """Register a statistic (its name must be new, its tier one of :data:`TIERS`).

    ``default=False`` makes it opt-in: ``watch(stats=None)`` leaves it out, and it is recorded
    when named in ``stats=``.
    """
    if name in STATISTICS:
        raise AssertionError(f"statistic {name!r} is defined twice")
    if tier not in TIERS:
        raise AssertionError(f"statistic {name!r}: tier must be one of {TIERS}, got {tier!r}")
    STATISTICS[name] = Statistic(name, block, source, tier, doc, combine, scope, default)
    return STATISTICS[name]


def decode_block(kind: str, values: np.ndarray, key: Any, layout: Any) -> Decoded:
    """Host side of every block kind: stacked blocks of many steps -> per-layer values."""
    return BLOCKS[kind].decode(values, key, layout)


def combine_block(kind: str, values: np.ndarray, key: Any, world: int) -> tuple[np.ndarray, Any]:
    """DDP side of every block kind: the W ranks' blocks (W, n) -> one block (n,) and its key.

    The lifecycle of a distributed flush (gather to rank 0, then write) lives in
    :mod:`gradwatch.integrations.distributed`; this is the per-block arithmetic it applies.
    """
    return BLOCKS[kind].combine(values, key, world)


def mesh_segments(kind: str, key: Any) -> tuple[tuple[str, int], ...]:
    """How a block of ``kind`` with ``key`` reduces over a mesh: ``((op, count), ...)``."""
    fn = BLOCKS[kind].mesh
    if fn is None:
        raise AssertionError(f"block kind {kind!r} declares no mesh reduction")
    return fn(key)


# -- the combine rules the statistic modules use ---------------------------------------------
def keep_rank0(values: np.ndarray, key: Any, world: int) -> tuple[np.ndarray, Any]:
    """Values every rank holds identically (DDP-averaged gradients, weights): rank 0's."""
    return values[0], key


def mean_over_ranks(values: np.ndarray, key: Any, world: int) -> tuple[np.ndarray, Any]:
    """Values whose global value is the ranks' mean (the loss of equal shares)."""
    return values.mean(axis=0), key


def sum_over_ranks(values: np.ndarray, key: Any, world: int) -> tuple[np.ndarray, Any]:
    """Counts that add up over the ranks' shares of the batch."""
    return values.sum(axis=0), key


def max_over_ranks(values: np.ndarray, key: Any, world: int) -> tuple[np.ndarray, Any]:
    """Flags and counts that are true globally when true on any rank."""
    return values.max(axis=0), key


def run_level(stats: tuple[str, ...]) -> Callable[[np.ndarray, Any, Any], Decoded]:
    """Decoder for a run-level block whose columns are ``stats`` (layer "")."""

    def decode(values: np.ndarray, key: Any, layout: Any) -> Decoded:
        v = values.astype(np.float64)
        return {s: ([layout.loss_layer], v[:, i : i + 1]) for i, s in enumerate(stats)}

    return decode
