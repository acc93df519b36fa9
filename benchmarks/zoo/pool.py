"""Running zoo cases in a process pool: the one runner of both sets.

``benchmarks/zoo.py`` (either set or both) and ``benchmarks/zoo_heldout.py`` (the held-out
set, scored against its truth) run their cases through :func:`run_cases`: each case in a
fresh ``spawn`` interpreter (no torch threads inherited), one torch thread per worker
(:func:`~.run.run_case`), the longest cases first, rows returned in the order asked.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from .case import Case

ROOT = Path(__file__).resolve().parents[2]

Row = dict[str, Any]


def case_named(name: str) -> Case:
    """The case called ``name``, in the development set or the held-out set."""
    from . import BY_NAME, heldout_cases

    if name in BY_NAME:
        return BY_NAME[name]
    for case in heldout_cases():
        if case.name == name:
            return case
    raise KeyError(f"no zoo case is called {name!r}")


def run_named(name: str) -> Row:
    """Run the case called ``name`` (what a worker process calls)."""
    from .run import run_case

    return run_case(case_named(name))


def _init_worker(root: str) -> None:
    if root not in sys.path:
        sys.path.insert(0, root)


def run_cases(names: list[str], jobs: int = 2,
              on_row: Callable[[list[Row]], None] | None = None,
              progress: Callable[[Row, int, int], None] | None = None) -> list[Row]:
    """Run the named cases, ``jobs`` processes at a time; rows in the order of ``names``.

    Args:
        names: case names, of either set.
        jobs: worker processes; 1 runs every case in this process.
        on_row: called with the rows finished so far (in ``names`` order) after each case,
            so that an interrupted run still leaves its rows (the scripts rewrite their JSON).
        progress: called with (row, cases done, cases in all) after each case.
    """
    rows: dict[str, Row] = {}

    def done(row: Row) -> None:
        rows[row["name"]] = row
        if progress:
            progress(row, len(rows), len(names))
        if on_row:
            on_row([rows[n] for n in names if n in rows])

    if jobs <= 1:
        for n in names:
            done(run_named(n))
    else:
        cost = {n: (case_named(n).budget_s, case_named(n).train.steps) for n in names}
        with ProcessPoolExecutor(jobs, mp_context=get_context("spawn"),
                                 initializer=_init_worker, initargs=(str(ROOT),)) as pool:
            futures = [pool.submit(run_named, n) for n in sorted(names, key=lambda n: cost[n],
                                                                 reverse=True)]
            for fut in as_completed(futures):
                done(fut.result())
    return [rows[n] for n in names]
