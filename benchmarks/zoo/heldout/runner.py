"""Running gradwatch on the held-out zoo and scoring it against the written truth.

Each case runs as the development zoo runs its cases, through the zoo's one runner
(``benchmarks.zoo.pool.run_cases`` and ``benchmarks.zoo.run.run_case``: ``gw.check`` at
initialisation, then a watched training run and ``gw.diagnose``). The score
counts verdicts: two per case (at init and after training), right when gradwatch's verdict is
the truth. A **false error** is an "error"-severity finding whose verdict is not the truth of
its stage, on a model whose training run trains (the truth says it trains, and it did): the
kind of alarm that would send a user to fix a model that works.

:func:`run_heldout` and :func:`score` are what ``benchmarks/zoo_heldout.py`` and the tests
call; the development zoo's script can import them too.
"""

from __future__ import annotations

import sys
from typing import Any

from gradwatch.verdicts import verdict_of_kind


def run_heldout(names: list[str] | None = None, jobs: int = 2, on_row=None,
                progress: bool = True) -> list[dict[str, Any]]:
    """Run held-out cases (all by default), ``jobs`` processes at a time; rows in set order.

    The zoo's one runner (:func:`benchmarks.zoo.pool.run_cases`), with a progress line that
    shows each verdict beside its truth.

    Args:
        names: case names; None for every case.
        jobs: worker processes (one torch thread each); 1 runs in this process.
        on_row: called with the rows finished so far after each case.
        progress: print one line per finished case to stderr.
    """
    from benchmarks.zoo.heldout import CASES
    from benchmarks.zoo.pool import run_cases

    def line(row: dict[str, Any], done: int, total: int) -> None:
        print(f"[{done}/{total}] {row['name']}: init {row['init'].get('verdict')} (truth "
              f"{row['expect_init']}), run {row['run'].get('verdict')} (truth "
              f"{row['expect_run']}) ({row['cpu_s']:.1f} s cpu)", file=sys.stderr, flush=True)

    return run_cases(names or [c.name for c in CASES], jobs, on_row=on_row,
                     progress=line if progress else None)


def false_errors(row: dict[str, Any]) -> list[str]:
    """"stage: kind" of each error finding that contradicts the truth on a model that trains."""
    trains = row["expect_outcome"] == "trains" and bool(row["run"].get("truth_held"))
    if not trains:
        return []
    out = []
    for stage in ("init", "run"):
        for tag in row[stage].get("findings", []):
            kind, _, severity = tag.rpartition(":")
            v = verdict_of_kind(kind)
            if severity == "error" and v is not None and v != row[f"expect_{stage}"]:
                out.append(f"{stage}: {kind}")
    return out


def score(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The held-out figures: verdicts right (per stage and together), cases right at both
    stages, false errors on models that train, crashes, training outcomes that did not hold."""
    n = len(rows)
    init_right = [r["name"] for r in rows if r["init"].get("verdict") == r["expect_init"]]
    run_right = [r["name"] for r in rows if r["run"].get("verdict") == r["expect_run"]]
    both = sorted(set(init_right) & set(run_right))
    verdicts = len(init_right) + len(run_right)
    fe = {r["name"]: false_errors(r) for r in rows}
    return {
        "cases": n,
        "verdicts_right": verdicts, "verdicts": 2 * n,
        "score": verdicts / (2 * n) if n else float("nan"),
        "init_right": len(init_right), "run_right": len(run_right),
        "cases_right": len(both),
        "wrong_init": [r["name"] for r in rows if r["name"] not in init_right],
        "wrong_run": [r["name"] for r in rows if r["name"] not in run_right],
        "false_errors": {k: v for k, v in fe.items() if v},
        "crashed": [f"{r['name']} ({s})" for r in rows for s in ("init", "run")
                    if r[s].get("verdict") == "error"],
        "truth_not_held": [r["name"] for r in rows if not r["run"].get("truth_held")],
    }


def render(rows: list[dict[str, Any]], summ: dict[str, Any]) -> str:
    """Plain text: case × (truth, gradwatch at init, gradwatch after training, right?)."""
    lines = [f"{'case':<26} {'family':<17} {'init: truth → gradwatch':<26} "
             f"{'after training: truth → gw':<28} {'right':<6} {'run (loss)':<28}"]
    for r in rows:
        cells = []
        marks = ""
        for stage in ("init", "run"):
            e, g = r[f"expect_{stage}"], r[stage].get("verdict", "error")
            cells.append(f"{e} → {g}")
            marks += "✓" if e == g else "✗"
        run = r["run"]
        loss = (f"{run.get('outcome')} ({run['loss_start']:.3g}→{run['loss_end']:.3g})"
                if "loss_start" in run else "error")
        if not run.get("truth_held"):
            loss += " ✗truth"
        lines.append(f"{r['name']:<26} {r['family']:<17} {cells[0]:<26} {cells[1]:<28} "
                     f"{marks:<6} {loss:<28}")
    s = summ
    lines += [
        "",
        f"score: {s['verdicts_right']}/{s['verdicts']} verdicts right ({100 * s['score']:.0f}%)"
        f"; at init {s['init_right']}/{s['cases']}, after training {s['run_right']}/"
        f"{s['cases']}; cases right at both stages {s['cases_right']}/{s['cases']}",
        f"false errors on models that train: {len(s['false_errors'])} "
        + (str(s["false_errors"]) if s["false_errors"] else ""),
    ]
    if s["crashed"]:
        lines.append(f"gradwatch raised on: {s['crashed']}")
    if s["truth_not_held"]:
        lines.append(f"training outcome differed from the truth: {s['truth_not_held']}")
    return "\n".join(lines)
