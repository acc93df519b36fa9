"""The held-out zoo: gradwatch's verdicts on families nobody tuned it on, scored against truth.

Usage::

    python benchmarks/zoo_heldout.py                          # every case, 2 jobs
    python benchmarks/zoo_heldout.py --only convnext_ls1e6,lstm2_t300 --jobs 1
    python benchmarks/zoo_heldout.py --json benchmarks/results/zoo_heldout_before.json

The cases are in ``benchmarks/zoo/heldout`` and their truth (measured without gradwatch,
``benchmarks/zoo_heldout_truth.py``) in ``benchmarks/results/zoo_heldout.md``. Prints case ×
(truth, gradwatch at init, gradwatch after training, right?), the score (verdicts right out of
two per case), and every false "error" on a model that trains; writes everything as JSON.
Never tune a rule on this set: a case a rule is changed for moves to the development zoo.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.zoo.heldout import BY_NAME, CASES  # noqa: E402
from benchmarks.zoo.heldout.runner import render, run_heldout, score  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    """Command line entry point; returns 0 (the held-out zoo reports, it does not fail)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", default="", help="comma-separated case names")
    ap.add_argument("--json", default=None, help="write the results here")
    ap.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1),
                    help="worker processes (default 2)")
    args = ap.parse_args(argv)
    names = [c.name for c in CASES]
    if args.only:
        names = [n.strip() for n in args.only.split(",") if n.strip()]
        unknown = [n for n in names if n not in BY_NAME]
        if unknown:
            ap.error(f"unknown cases {unknown}; known: {', '.join(BY_NAME)}")
    t0, c0 = time.perf_counter(), time.process_time()

    def write(rows: list[dict], complete: bool) -> None:
        if not args.json:
            return
        import torch

        import gradwatch

        meta = {"complete": complete, "cases_total": len(names),
                "wall_s": time.perf_counter() - t0, "main_cpu_s": time.process_time() - c0,
                "case_cpu_s": sum(r["cpu_s"] for r in rows), "jobs": args.jobs,
                "loadavg": os.getloadavg(), "cpus": os.cpu_count(),
                "python": platform.python_version(), "torch": torch.__version__,
                "gradwatch": gradwatch.__version__,
                "date": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"meta": meta, "summary": score(rows), "cases": rows},
                                   indent=1, default=str))

    rows = run_heldout(names, max(1, args.jobs), on_row=lambda done: write(done, False))
    summ = score(rows)
    print(render(rows, summ))
    print(f"\n{len(rows)} cases in {time.perf_counter() - t0:.0f} s wall, "
          f"{sum(r['cpu_s'] for r in rows):.0f} s CPU in the cases ({args.jobs} jobs; load "
          f"average {os.getloadavg()[0]:.1f})")
    if args.json:
        write(rows, True)
        print(f"written: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
