"""The background writer: blocks of device tensors in, Parquet parts out.

The training thread hands over, once per flush, one flat tensor (all blocks of all buffered
steps concatenated on their device) and the structure needed to read it. The writer thread
moves it to the host (the only device-to-host transfer), decodes it into per-layer statistics
with NumPy, and writes one Parquet part through a temporary file and a rename.

Bounded: a flush is on disk before the training finishes another step. The Monitor calls
:meth:`RunWriter.settle` when the step after a flush closes, and it waits there until the
part is written; a flush also waits for the previous one (:meth:`RunWriter.submit`). So at
any moment the finished steps not on disk are either those of the flush being written (the
step after it still running) or those buffered since the last flush: a SIGKILL loses at most
the last flush interval, ``flush_every`` steps (one at ``flush_every=1``). The write overlaps
one training step; training waits only for what is left of it (nothing while a step takes
longer than a part), and a disk that hangs holds it up for :data:`MAX_WAIT_SECS` at most.

Faults: a write that fails (disk full, a filesystem turned read-only, the directory removed)
is kept for the training thread to report once; training goes on and the rows are retried at
the next flush and at close. Rows held for retries are bounded (``max_pending_rows``): past
it the oldest are dropped, counted and reported. Whatever could not be written by the end is
counted in :attr:`RunWriter.lost_rows` (the Monitor records it in ``meta.json``).
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from gradwatch.stats import ALL_STATS
from gradwatch.stats.registry import decode_block
from gradwatch.store.format import STATS_DIR, is_real_dir, part_name
from gradwatch.store.safe_write import write_with

STAT_INDEX = {s: i for i, s in enumerate(ALL_STATS)}
COMPACT_AT = 32  # merge single parts once this many have accumulated
#: Single parts up to this many rows in all are kept in memory until they are compacted, so
#: that a compaction does not read back what was just written (most of the writer's time at
#: small flush intervals); larger ones are read back from disk.
COMPACT_CACHE_ROWS = 500_000
MAX_PENDING_ROWS = 2_000_000  # rows held for retries after failed writes (~40 MB of Arrow)
#: How much lower than the training thread the writer thread runs (Linux nice increment):
#: on a machine whose cores training keeps busy, a flush then takes time the training does
#: not need instead of time it does. The writer still gets its share, so flushes finish.
WRITER_NICE = 10
#: Longest the training waits for a flush to be written (seconds). Past it (a disk that
#: hangs) training goes on and the flush stays queued: training is never held up for good.
MAX_WAIT_SECS = 60.0


@dataclass
class Layout:
    """What the host side needs to decode blocks: static facts about the watched model."""

    layer_names: list[str]
    layer_params: dict[int, list[int]]  # layer index -> parameter indices
    numel: np.ndarray  # elements per parameter

    @property
    def loss_layer(self) -> int:
        """Index of the pseudo-layer "" that holds the loss."""
        return len(self.layer_names)


@dataclass
class Block:
    """One block of one step: ``kind`` and ``key`` say how to decode ``tensor`` (1-D float32)."""

    step: int
    kind: str
    key: Any
    tensor: torch.Tensor


@dataclass
class _Batch:
    flat: torch.Tensor
    blocks: list[tuple[int, str, Any, int]]  # step, kind, key, length
    done: threading.Event = field(default_factory=threading.Event)
    settled: bool = False  # the training thread has waited for it (RunWriter.settle)


def decode(layout: Layout, blocks: list[tuple[int, str, Any, int]], flat: np.ndarray):
    """Decode a flush into long-form arrays (step, layer, stat, value), sorted."""
    groups: dict[tuple[str, Any], tuple[list[int], list[np.ndarray]]] = defaultdict(
        lambda: ([], [])
    )
    off = 0
    for step, kind, key, n in blocks:
        g = groups[(kind, key)]
        g[0].append(step)
        g[1].append(flat[off : off + n])
        off += n
    cols: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
    for (kind, key), (steps, rows) in groups.items():
        steps_a = np.asarray(steps, dtype=np.int64)
        vals = np.stack(rows)
        out = decode_block(kind, vals, key, layout)  # one definition per block kind
        for stat, (layers, v) in out.items():
            s, nl = len(steps_a), len(layers)
            cols.append(
                (
                    np.repeat(steps_a, nl),
                    np.tile(np.asarray(layers, dtype=np.int32), s),
                    np.full(s * nl, STAT_INDEX[stat], dtype=np.int32),
                    np.asarray(v, dtype=np.float64).reshape(-1),
                )
            )
    if not cols:
        return None
    step, layer, stat, value = (np.concatenate(c) for c in zip(*cols, strict=True))
    order = np.lexsort((stat, layer, step))
    return step[order], layer[order], stat[order], value[order]


def to_table(layout: Layout, arrays) -> pa.Table:
    """Long-form arrays -> Arrow table with dictionary-encoded layer and stat columns."""
    step, layer, stat, value = arrays
    layer_dict = pa.array(layout.layer_names + [""], type=pa.string())
    stat_dict = pa.array(list(ALL_STATS), type=pa.string())
    return pa.table(
        {
            "step": pa.array(step, type=pa.int64()),
            "layer": pa.DictionaryArray.from_arrays(pa.array(layer, pa.int32()), layer_dict),
            "stat": pa.DictionaryArray.from_arrays(pa.array(stat, pa.int32()), stat_dict),
            "value": pa.array(value.astype(np.float32), type=pa.float32()),
        }
    )


def write_part(path: Path, table: pa.Table) -> None:
    """Write ``table`` to ``path`` atomically (temporary file, then rename)."""
    write_with(
        path,
        lambda fh: pq.write_table(
            table,
            fh,
            compression="zstd",
            compression_level=3,
            use_dictionary=["layer", "stat", "step"],
            use_byte_stream_split=["value"],
        ),
    )


class RunWriter:
    """Background thread that turns flushed blocks into Parquet parts (or in-memory tables)."""

    def __init__(
        self,
        run_dir: Path | None,
        layout: Layout,
        sink: Any = None,
        *,
        first_part: int = 0,
        max_pending_rows: int = MAX_PENDING_ROWS,
    ):
        """Start the writer thread.

        Args:
            run_dir: the run directory (its ``stats/`` exists), or None to keep tables here.
            layout: how to decode blocks.
            sink: a live sink called from this thread with every decoded flush as
                ``sink(steps, layer names, stat names, values)`` (and ``sink.close()`` at
                the end, if it has one), or None. The live TensorBoard export is one; it is
                handed down from above (this layer imports nothing that renders).
            first_part: number of the first part to write (a resumed run continues after
                the parts on disk).
            max_pending_rows: most rows held for retries after failed writes.
        """
        self.run_dir = run_dir
        self.layout = layout
        self._sink = sink  # a live sink called from this thread, or None
        self.tables: list[pa.Table] = []  # in-memory runs keep everything here
        self._pending: list[pa.Table] = []  # rows not yet on disk (after a failed write)
        self._seq = first_part
        self.max_pending_rows = max_pending_rows
        self.dropped_rows = 0  # rows given up to keep the retry memory bounded
        self.dropped_steps: tuple[int, int] | None = None  # (first, last) step given up
        self.written_rows = 0
        self._single_parts: list[int] = []
        self._single_tables: list[pa.Table] | None = []  # their tables (None: read them back)
        self.error: BaseException | None = None
        self._errors: list[BaseException] = []
        self._lock = threading.Lock()  # guards _pending and the counters read by close()
        self._q: queue.Queue[_Batch | None] = queue.Queue()
        self._last: _Batch | None = None  # the last batch handed over
        self.overdue = 0  # flushes not written after MAX_WAIT_SECS of waiting (settle)
        self._thread = threading.Thread(target=self._loop, name="gradwatch-writer", daemon=True)
        self._thread.start()

    # -- called from the training thread ---------------------------------------------------
    def submit(self, blocks: list[Block]) -> _Batch | None:
        """Hand a flush to the writer: one concatenation on the device, no host sync here."""
        if not blocks:
            return None
        parts = [b.tensor.reshape(-1).to(torch.float32) for b in blocks]
        if len({t.device for t in parts}) > 1:
            # the model moved to another device between flushes: meet on the host (rare)
            parts = [t.cpu() for t in parts]
        flat = torch.cat(parts)
        return self._hand_over(
            _Batch(flat, [(b.step, b.kind, b.key, b.tensor.numel()) for b in blocks])
        )

    def submit_flat(self, structure: list[tuple[int, str, Any, int]], flat: Any) -> _Batch:
        """Hand over an already concatenated flush (used for flushes combined across ranks)."""
        return self._hand_over(_Batch(torch.as_tensor(flat), list(structure)))

    def _hand_over(self, batch: _Batch) -> _Batch:
        """Queue ``batch`` once the previous one is written (backpressure: one flush behind)."""
        prev = self._last
        if prev is not None and not prev.settled:
            self.settle()
        self._last = batch
        self._q.put(batch)
        return batch

    def close(self, timeout: float = 60.0) -> None:
        """Write everything submitted (retrying rows of failed writes), compact, stop."""
        self._q.put(None)
        self._thread.join(timeout)

    @property
    def pending_rows(self) -> int:
        """Rows decoded but not on disk (their writes failed; retried at the next flush)."""
        with self._lock:
            return sum(t.num_rows for t in self._pending)

    @property
    def lost_rows(self) -> int:
        """Rows that are not on disk: dropped to bound memory, plus those still pending."""
        return self.dropped_rows + self.pending_rows

    def lost_steps(self) -> tuple[int, int] | None:
        """(first, last) step among the lost rows, or None if nothing is lost."""
        with self._lock:
            spans = [self.dropped_steps] if self.dropped_steps else []
            for t in self._pending:
                col = t.column("step")
                spans.append((pc.min(col).as_py(), pc.max(col).as_py()))
        if not spans:
            return None
        return min(a for a, _ in spans), max(b for _, b in spans)

    def settle(self) -> None:
        """Wait until the last flush handed over is written, once, at most MAX_WAIT_SECS.

        A flush not written by then is counted in :attr:`overdue` (a hanging disk) and not
        waited for again: training goes on.
        """
        batch = self._last
        if batch is None or batch.settled:
            return
        batch.settled = True
        if not batch.done.wait(MAX_WAIT_SECS):
            self.overdue += 1

    def wait(self, batch: _Batch | None = None, timeout: float = 60.0) -> None:
        """Block until ``batch`` is written (by default: every batch handed over so far)."""
        batch = batch if batch is not None else self._last
        if batch is not None:
            batch.done.wait(timeout)

    # -- the writer thread -------------------------------------------------------------------
    def _loop(self) -> None:
        lower_priority(WRITER_NICE)
        while True:
            batch = self._q.get()
            if batch is None:
                self._write_pending(final=True)
                close = getattr(self._sink, "close", None)
                if close is not None:
                    close()
                return
            try:
                flat = batch.flat.detach().cpu().numpy()  # the one transfer per flush
                arrays = decode(self.layout, batch.blocks, flat)
                if arrays is not None:
                    if self._sink is not None:
                        self._write_sink(arrays)
                    table = to_table(self.layout, arrays)
                    if self.run_dir is None:
                        self.tables.append(table)
                    else:
                        with self._lock:
                            self._pending.append(table)
                            self._bound_pending()
                        self._write_pending(final=False)
            except Exception as exc:  # noqa: BLE001 - the writer must never kill training
                self._report(exc)
            finally:
                batch.done.set()

    def _write_sink(self, arrays) -> None:
        """Hand every decoded value to the live sink, with layer and statistic names."""
        names = self.layout.layer_names + [""]
        step, layer, stat, value = arrays
        self._sink(
            step, [names[i] for i in layer.tolist()], [ALL_STATS[k] for k in stat.tolist()], value
        )

    def _bound_pending(self) -> None:
        """Drop the oldest pending tables while more than ``max_pending_rows`` are held."""
        rows = sum(t.num_rows for t in self._pending)
        while rows > self.max_pending_rows and len(self._pending) > 1:
            old = self._pending.pop(0)
            rows -= old.num_rows
            self.dropped_rows += old.num_rows
            col = old.column("step")
            first, last = pc.min(col).as_py(), pc.max(col).as_py()
            if self.dropped_steps is not None:
                first, last = min(first, self.dropped_steps[0]), max(last, self.dropped_steps[1])
            self.dropped_steps = (first, last)

    def _write_pending(self, final: bool) -> None:
        if self.run_dir is None or (not self._pending and not final):
            return
        stats_dir = self.run_dir / STATS_DIR
        try:
            with self._lock:
                pending = list(self._pending)
            if pending:
                if not is_real_dir(stats_dir):
                    if not is_real_dir(self.run_dir) or os.path.lexists(stats_dir):
                        raise FileNotFoundError(
                            f"{stats_dir} is missing or not a directory of this run"
                        )
                    stats_dir.mkdir()  # removed while the run went on: recreated
                table = pa.concat_tables(pending)
                write_part(stats_dir / part_name(self._seq), table)
                self._single_parts.append(self._seq)
                self._keep_for_compaction(table)
                self._seq += 1
                with self._lock:
                    del self._pending[: len(pending)]
                    self.written_rows += table.num_rows
            if len(self._single_parts) >= COMPACT_AT or (final and len(self._single_parts) > 1):
                self._compact(stats_dir)
        except Exception as exc:  # noqa: BLE001
            self._report(exc)

    def _compact(self, stats_dir: Path) -> None:
        """Merge the single parts written since the last compaction into one range part.

        Only the recent single parts are merged (never earlier ranges), so the cost of a
        compaction stays bounded however long the run is.
        """
        names = [stats_dir / part_name(s) for s in self._single_parts]
        singles = [p for p in names if p.exists()]
        kept, self._single_tables = self._single_tables, []
        if len(singles) >= 2:
            if kept is None or len(singles) != len(names):
                kept = [pq.read_table(p) for p in singles]
            table = pa.concat_tables(kept).combine_chunks()
            write_part(stats_dir / part_name(self._single_parts[0], self._single_parts[-1]), table)
            for p in singles:
                p.unlink(missing_ok=True)
        self._single_parts.clear()

    def _keep_for_compaction(self, table: pa.Table) -> None:
        """Keep a written single part's table for the next compaction, while they are small."""
        kept = self._single_tables
        if kept is not None:
            kept.append(table)
            if sum(t.num_rows for t in kept) > COMPACT_CACHE_ROWS:
                self._single_tables = None

    def _report(self, exc: BaseException) -> None:
        """Keep the error for the training thread to report (warnings from threads get lost)."""
        self.error = exc
        self._errors.append(exc)

    def take_errors(self) -> list[BaseException]:
        """Errors since the last call (called from the training thread)."""
        errs, self._errors = self._errors, []
        return errs


def lower_priority(nice: int) -> None:
    """Lower the calling thread's CPU priority by ``nice`` (Linux; elsewhere nothing)."""
    if nice <= 0:
        return
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + nice))
    except (AttributeError, OSError):  # no per-thread priorities here: run as is
        pass


def wait_until(pred, timeout: float) -> bool:
    """Poll ``pred`` until true or ``timeout`` seconds pass (used by tests and close)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.01)
    return pred()
