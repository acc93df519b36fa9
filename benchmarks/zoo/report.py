"""The zoo's tables: confusion (expected × got), false alarms, misses, families, times."""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Any

from .case import VERDICTS

STAGES = (("init", "gw.check at init"), ("run", "gw.diagnose of the training run"))


def _got(row: dict[str, Any], stage: str) -> str:
    return row[stage].get("verdict", "error")


def confusion(rows: list[dict[str, Any]], stage: str) -> dict[str, dict[str, int]]:
    """{expected: {got: count}} for one stage ("init" or "run")."""
    table: dict[str, Counter] = defaultdict(Counter)
    for r in rows:
        table[r[f"expect_{stage}"]][_got(r, stage)] += 1
    return {e: dict(c) for e, c in table.items()}


def false_alarms(rows: list[dict[str, Any]], stage: str) -> list[str]:
    """Cases expected healthy that got another verdict."""
    return [r["name"] for r in rows
            if r[f"expect_{stage}"] == "healthy" and _got(r, stage) != "healthy"]


def misses(rows: list[dict[str, Any]], stage: str) -> list[str]:
    """Cases expected sick (not healthy, not uncertain) that got "healthy"."""
    return [r["name"] for r in rows
            if r[f"expect_{stage}"] not in ("healthy", "uncertain") and _got(r, stage) == "healthy"]


def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Every figure the zoo reports, JSON-ready."""
    out: dict[str, Any] = {"cases": len(rows)}
    for stage, _ in STAGES:
        right = [r["name"] for r in rows if _got(r, stage) == r[f"expect_{stage}"]]
        out[stage] = {
            "correct": len(right),
            "wrong": sorted(r["name"] for r in rows if r["name"] not in right),
            "confusion": confusion(rows, stage),
            "false_alarms": false_alarms(rows, stage),
            "misses": misses(rows, stage),
        }
    fam: dict[str, dict[str, int]] = defaultdict(lambda: Counter())
    for r in rows:
        f = fam[r["family"]]
        f["cases"] += 1
        for stage, _ in STAGES:
            f[f"{stage}_correct"] += _got(r, stage) == r[f"expect_{stage}"]
        f["truth_held"] += bool(r["run"].get("truth_held"))
    out["families"] = {k: dict(v) for k, v in sorted(fam.items())}
    out["truth_not_held"] = [r["name"] for r in rows if not r["run"].get("truth_held")]
    out["forbidden_remedies_offered"] = {
        r["name"]: sorted({*r["init"].get("forbidden_offered", []),
                           *r["run"].get("forbidden_offered", [])})
        for r in rows
        if r["init"].get("forbidden_offered") or r["run"].get("forbidden_offered")
    }
    out["over_budget"] = [r["name"] for r in rows if r["over_budget"]]
    return out


def render(rows: list[dict[str, Any]], summ: dict[str, Any]) -> str:
    """Plain-text report: per-case lines, confusion tables, alarms, misses, families."""
    lines = [f"{'case':<28} {'family':<11} {'init: expect→got':<24} "
             f"{'run: expect→got':<24} {'outcome (loss)':<30} {'cpu s':>6}"]
    for r in rows:
        cells = []
        for stage, _ in STAGES:
            e, g = r[f"expect_{stage}"], _got(r, stage)
            cells.append(f"{'  ' if e == g else '✗ '}{e}→{g}")
        run = r["run"]
        oc = run.get("outcome", "?")
        mark = "" if run.get("truth_held") else " ✗truth"
        loss = (f"{oc} ({run['loss_start']:.3g}→{run['loss_end']:.3g}){mark}"
                if "loss_start" in run else f"error{mark}")
        over = f" > budget {r['budget_s']:.0f}" if r["over_budget"] else ""
        lines.append(f"{r['name']:<28} {r['family']:<11} {cells[0]:<24} {cells[1]:<24} "
                     f"{loss:<30} {r['cpu_s']:>6.1f}{over}")
    for stage, title in STAGES:
        s = summ[stage]
        conf = s["confusion"]
        got_cols = [v for v in (*VERDICTS, "error")
                    if any(v in row for row in conf.values())]
        lines += ["", f"Confusion, {title}: {s['correct']}/{summ['cases']} right "
                      "(rows: expected, columns: got)",
                  f"{'':<12}" + "".join(f"{c:>11}" for c in got_cols)]
        for e in VERDICTS:
            if e in conf:
                lines.append(f"{e:<12}" + "".join(f"{conf[e].get(c, 0):>11}" for c in got_cols))
        lines.append(f"false alarms on healthy models: {len(s['false_alarms'])} "
                     f"{s['false_alarms']}")
        lines.append(f"misses on sick models: {len(s['misses'])} {s['misses']}")
    lines += ["", "By family: cases, right at init, right after training, training truth held"]
    for fam, f in summ["families"].items():
        lines.append(f"  {fam:<12} {f['cases']:>3} {f['init_correct']:>4} "
                     f"{f['run_correct']:>4} {f['truth_held']:>4}")
    if summ["truth_not_held"]:
        lines.append(f"ground truth did not hold (training outcome): {summ['truth_not_held']}")
    if summ.get("forbidden_remedies_offered"):
        lines.append("remedies offered that the model already has: "
                     f"{summ['forbidden_remedies_offered']}")
    if summ["over_budget"]:
        lines.append(f"over their CPU budget: {summ['over_budget']}")
    return "\n".join(lines)
