"""The gradwatch model zoo: every case checked at init and diagnosed after training.

Usage::

    python benchmarks/zoo.py                      # every case (under 20 min on 2 cores)
    python benchmarks/zoo.py --quick              # the quick subset the test suite runs
    python benchmarks/zoo.py --only mlp_relu_he_30,resnet50 --jobs 1
    python benchmarks/zoo.py --json benchmarks/results/zoo.json

Each case (``benchmarks/zoo/``) states its expected verdict for ``gw.check`` at
initialisation and for ``gw.diagnose`` of a short training run watched by ``gw.watch``, and
where that truth comes from; the training run's outcome (the loss falls, stalls or
diverges) is checked. Cases run in a process pool, one torch thread per worker. Prints a
confusion table (expected × got) per stage, false alarms and misses, figures by family and
per-case CPU time; writes everything as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.zoo import BY_NAME, CASES  # noqa: E402
from benchmarks.zoo.report import render, summary  # noqa: E402


def _run_named(name: str) -> dict:
    from benchmarks.zoo.run import run_case

    return run_case(BY_NAME[name])


def _init_worker(root: str) -> None:
    if root not in sys.path:
        sys.path.insert(0, root)


def run(names: list[str], jobs: int) -> list[dict]:
    """Run the named cases, ``jobs`` at a time, longest first; rows in the zoo's order."""
    rows: dict[str, dict] = {}
    if jobs <= 1:
        for n in names:
            rows[n] = _run_named(n)
            _progress(rows[n], len(rows), len(names))
    else:
        ctx = get_context("spawn")  # fresh interpreters: no torch threads inherited
        with ProcessPoolExecutor(jobs, mp_context=ctx, initializer=_init_worker,
                                 initargs=(str(ROOT),)) as pool:
            futures = {pool.submit(_run_named, n): n for n in names}
            for fut in _as_completed(futures):
                row = fut.result()
                rows[row["name"]] = row
                _progress(row, len(rows), len(names))
    return [rows[n] for n in names]


def _as_completed(futures):
    from concurrent.futures import as_completed

    return as_completed(futures)


def _progress(row: dict, done: int, total: int) -> None:
    cpu = row["init"]["cpu_s"] + row["run"]["cpu_s"]
    print(f"[{done}/{total}] {row['name']}: init {row['init'].get('verdict')}, "
          f"run {row['run'].get('verdict')} ({cpu:.1f} s cpu)", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    """Command line entry point; returns 0 (the zoo reports, it does not fail)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="only the quick subset")
    ap.add_argument("--only", default="", help="comma-separated case names")
    ap.add_argument("--json", default=None, help="write the results here")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="worker processes")
    args = ap.parse_args(argv)
    names = [c.name for c in CASES if c.quick or not args.quick]
    if args.only:
        wanted = [n.strip() for n in args.only.split(",") if n.strip()]
        unknown = [n for n in wanted if n not in BY_NAME]
        if unknown:
            ap.error(f"unknown cases {unknown}; known: {', '.join(BY_NAME)}")
        names = [n for n in names if n in wanted] if args.quick else wanted
    t0, c0 = time.perf_counter(), time.process_time()
    rows = run(names, max(1, args.jobs))
    wall = time.perf_counter() - t0
    summ = summary(rows)
    print(render(rows, summ))
    case_cpu = sum(r["init"]["cpu_s"] + r["run"]["cpu_s"] for r in rows)
    print(f"\n{len(rows)} cases in {wall:.0f} s wall, {case_cpu:.0f} s CPU in the cases "
          f"({args.jobs} jobs; load average {os.getloadavg()[0]:.1f})")
    if args.json:
        import torch

        import gradwatch

        meta = {"wall_s": wall, "case_cpu_s": case_cpu, "main_cpu_s": time.process_time() - c0,
                "jobs": args.jobs, "loadavg": os.getloadavg(), "cpus": os.cpu_count(),
                "python": platform.python_version(), "torch": torch.__version__,
                "gradwatch": gradwatch.__version__, "quick": args.quick,
                "date": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"meta": meta, "summary": summ, "cases": rows}, indent=1,
                                   default=str))
        print(f"written: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
