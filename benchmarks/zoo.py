"""The gradwatch model zoo: every case checked at init and diagnosed after training.

Usage::

    python benchmarks/zoo.py                      # both sets (under 20 min on 2 cores)
    python benchmarks/zoo.py --set dev            # the development set only
    python benchmarks/zoo.py --set heldout        # the held-out set only
    python benchmarks/zoo.py --quick              # the quick subset the test suite runs
    python benchmarks/zoo.py --only mlp_relu_he_30,resnet50 --jobs 1
    python benchmarks/zoo.py --json benchmarks/results/zoo.json

Each case (``benchmarks/zoo/``) states its expected verdict for ``gw.check`` at
initialisation and for ``gw.diagnose`` of a short training run watched by ``gw.watch``, and
where that truth comes from; the training run's outcome (the loss falls, stalls or
diverges) is checked, and so are the remedies a case forbids (those the model already has).
The development set and, when ``benchmarks/zoo/heldout/`` is there, the held-out set are
scored separately: the held-out score is the one that says how the rules hold on
architectures nobody tuned them on (printed and written as ``benchmarks/zoo_heldout.py``
does; both scripts run cases through ``benchmarks.zoo.pool.run_cases``). Cases run in a
process pool, one torch thread per worker. Prints a confusion table (expected × got) per set
and stage, false alarms and misses, figures by family and per-case CPU time; writes
everything as JSON.
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

from benchmarks.zoo import SET_NAMES, cases_of  # noqa: E402
from benchmarks.zoo.pool import run_cases  # noqa: E402
from benchmarks.zoo.report import render, summary  # noqa: E402


def _progress(row: dict, done: int, total: int) -> None:
    cpu = row["cpu_s"]
    print(f"[{done}/{total}] {row['name']}: init {row['init'].get('verdict')}, "
          f"run {row['run'].get('verdict')} ({cpu:.1f} s cpu)", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    """Command line entry point; returns 0 (the zoo reports, it does not fail)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--set", default="all", choices=("all", *SET_NAMES),
                    help="which set to run: dev, heldout or all (default; heldout when present)")
    ap.add_argument("--quick", action="store_true", help="only the quick subset")
    ap.add_argument("--only", default="", help="comma-separated case names")
    ap.add_argument("--json", default=None, help="write the results here")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="worker processes")
    args = ap.parse_args(argv)
    sets = {s: cases_of(s) for s in SET_NAMES if args.set in ("all", s)}
    known = {c.name: s for s, cases in sets.items() for c in cases}
    names = [c.name for cases in sets.values() for c in cases if c.quick or not args.quick]
    if args.only:
        wanted = [n.strip() for n in args.only.split(",") if n.strip()]
        unknown = [n for n in wanted if n not in known]
        if unknown:
            ap.error(f"unknown cases {unknown}; known: {', '.join(known)}")
        names = [n for n in names if n in wanted] if args.quick else wanted
    t0, c0 = time.perf_counter(), time.process_time()

    def by_set(rows: list[dict]) -> dict[str, list[dict]]:
        out: dict[str, list[dict]] = {}
        for r in rows:
            r["set"] = known[r["name"]]
            out.setdefault(r["set"], []).append(r)
        return out

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
                "gradwatch": gradwatch.__version__, "quick": args.quick, "set": args.set,
                "date": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
        grouped = by_set(rows)
        dev = grouped.get("dev", [])
        doc = {"meta": meta, "summary": summary(dev), "cases": dev,
               "sets": {s: {"summary": summary(r), "cases": r} for s, r in grouped.items()}}
        if "heldout" in grouped:
            from benchmarks.zoo.heldout.runner import score as heldout_score

            doc["sets"]["heldout"]["score"] = heldout_score(grouped["heldout"])
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(doc, indent=1, default=str))

    # the JSON is rewritten after every case, so an interrupted run still leaves its rows
    rows = run_cases(names, max(1, args.jobs), on_row=lambda done: write(done, False),
                     progress=_progress)
    wall = time.perf_counter() - t0
    for set_name, set_rows in by_set(rows).items():
        title = {"dev": "Development set", "heldout": "Held-out set"}[set_name]
        print(f"\n== {title}: {len(set_rows)} cases ==")
        print(render(set_rows, summary(set_rows)))
        if set_name == "heldout":  # the score benchmarks/zoo_heldout.py prints
            from benchmarks.zoo.heldout.runner import render as heldout_render
            from benchmarks.zoo.heldout.runner import score as heldout_score

            print("\n" + heldout_render(set_rows, heldout_score(set_rows)))
    if args.set in ("all", "heldout") and not sets.get("heldout"):
        print("\n(no held-out set: benchmarks/zoo/heldout/ is not there)")
    case_cpu = sum(r["cpu_s"] for r in rows)
    print(f"\n{len(rows)} cases in {wall:.0f} s wall, {case_cpu:.0f} s CPU in the cases "
          f"({args.jobs} jobs; load average {os.getloadavg()[0]:.1f})")
    if args.json:
        write(rows, True)
        print(f"written: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
