"""Measure the held-out zoo's ground truth, without gradwatch.

Usage::

    python benchmarks/zoo_heldout_truth.py                         # every case, table printed
    python benchmarks/zoo_heldout_truth.py --only convnext_ls1e6 --jobs 1
    python benchmarks/zoo_heldout_truth.py --json benchmarks/results/zoo_heldout.json \\
        --md benchmarks/results/zoo_heldout.md [--record]
    python benchmarks/zoo_heldout_truth.py --only NEW_CASE,... --json \\
        benchmarks/results/zoo_heldout.json --md benchmarks/results/zoo_heldout.md --record

With ``--only`` and an existing ``--json`` file, the other cases' rows are kept from it (their
figures as measured when their truth was written), so the table covers the whole set.
``--prune`` measures nothing and drops the rows of cases that left the set.

For every case of ``benchmarks/zoo/heldout``: brute-force autograd figures on the check batch
at initialisation (‖∂L/∂h‖ along the trunk, ‖∂L/∂x_t‖ over time, forward std, ‖∇W‖/‖W‖,
dead and saturated units, the loss against chance), the case's training run exactly as the
zoo's runner trains it (no monitor), and the same figures on the trained model. Prints them
with each case's written truth, flags a training outcome that did not hold and a figure that
drifted from what the case recorded, and writes JSON and Markdown.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.zoo.heldout import BY_NAME, ENTRIES  # noqa: E402
from benchmarks.zoo.heldout.truth import COLUMNS, _fmt, drift, render  # noqa: E402

MD_HEAD = ("# Held-out zoo: measured ground truth\n\nWritten by "
           "`python benchmarks/zoo_heldout_truth.py` (no gradwatch involved).\n\n")


def _measure(name: str) -> dict:
    from benchmarks.zoo.heldout import ENTRIES
    from benchmarks.zoo.heldout.truth import measure_entry

    return measure_entry(next(e for e in ENTRIES if e.case.name == name))


def _init_worker(root: str) -> None:
    if root not in sys.path:
        sys.path.insert(0, root)


def main(argv: list[str] | None = None) -> int:
    """Command line entry point; returns 1 if a stated training outcome did not hold."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", default="", help="comma-separated case names")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--json", default=None)
    ap.add_argument("--md", default=None)
    ap.add_argument("--record", action="store_true",
                    help="write the measured cases' figures into "
                         "benchmarks/zoo/heldout/figures.json, keeping the other cases' (when "
                         "the truth is written, never after gradwatch has been run on a case)")
    ap.add_argument("--prune", action="store_true",
                    help="measure nothing: rewrite --json and --md with the rows of the cases "
                         "in the set now (cases that moved to the development zoo dropped)")
    args = ap.parse_args(argv)
    if args.prune:
        if not (args.json and Path(args.json).is_file()):
            ap.error("--prune needs an existing --json file")
        doc = json.loads(Path(args.json).read_text())
        old = {r["name"]: r for r in doc["cases"]}
        kept = [old[e.case.name] for e in ENTRIES if e.case.name in old]
        doc["cases"] = kept
        doc["meta"]["pruned"] = sorted(set(old) - {r["name"] for r in kept})
        Path(args.json).write_text(json.dumps(doc, indent=1, default=str))
        if args.md:
            Path(args.md).write_text(MD_HEAD + render(kept) + "\n")
        print(f"kept {len(kept)} rows, dropped {doc['meta']['pruned'] or 'none'}")
        return 0
    names = [e.case.name for e in ENTRIES]
    if args.only:
        names = [n.strip() for n in args.only.split(",") if n.strip()]
        unknown = [n for n in names if n not in BY_NAME]
        if unknown:
            ap.error(f"unknown cases {unknown}")
    t0 = time.perf_counter()
    rows: dict[str, dict] = {}
    ctx = get_context("spawn")
    with ProcessPoolExecutor(max(1, args.jobs), mp_context=ctx, initializer=_init_worker,
                             initargs=(str(ROOT),)) as pool:
        futs = {pool.submit(_measure, n): n for n in names}
        for fut in as_completed(futs):
            r = fut.result()
            r["drift"] = drift(r)
            rows[r["name"]] = r
            short = ", ".join(f"{t}={_fmt((r.get(k.split('.')[0]) or {}).get(k.split('.')[1]))}"
                              for k, t in COLUMNS)
            print(f"[{len(rows)}/{len(names)}] {r['name']} ({r['wall_s']:.0f} s, training "
                  f"{r['train']['wall_s']:.0f} s): truth "
                  f"{r['truth_init']}/{r['truth_run']}; {short}", file=sys.stderr, flush=True)
    ordered = [rows[n] for n in names]
    table = ordered
    if args.only and args.json and Path(args.json).is_file():
        # keep the other cases' rows of the table: measured when their truth was written
        old = {r["name"]: r for r in json.loads(Path(args.json).read_text())["cases"]}
        old.update(rows)
        table = [old[e.case.name] for e in ENTRIES if e.case.name in old]
    held = [r["name"] for r in ordered if not r["train"]["truth_held"]]
    drifted = {r["name"]: r["drift"] for r in ordered if r["drift"]}
    print(render(ordered).split("\n\n### ")[0])
    print(f"\n{len(ordered)} cases in {time.perf_counter() - t0:.0f} s; stated outcome not "
          f"held: {held or 'none'}; recorded figures drifted: {drifted or 'none'}")
    if args.json:
        meta = {"wall_s": time.perf_counter() - t0, "jobs": args.jobs, "measured": names,
                "loadavg": os.getloadavg(), "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
                "outcome_not_held": held, "drifted": drifted}
        Path(args.json).write_text(json.dumps({"meta": meta, "cases": table}, indent=1,
                                              default=str))
    if args.md:
        Path(args.md).write_text(MD_HEAD + render(table) + "\n")
    if args.record:
        from benchmarks.zoo.heldout.figures import FIGURES, PATH
        from benchmarks.zoo.heldout.truth import figures_json

        PATH.write_text(figures_json(ordered, FIGURES, [e.case.name for e in ENTRIES]))
        print(f"written: {PATH} ({len(ordered)} cases recorded, the others kept)")
    return 1 if held else 0


if __name__ == "__main__":
    sys.exit(main())
