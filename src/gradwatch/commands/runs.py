"""``gradwatch runs [DIR]``: list the run directories under DIR with their state and verdict."""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

from rich.console import Console
from rich.table import Table

from gradwatch.commands.args import existing_dir
from gradwatch.errors import RunDirectoryError
from gradwatch.findings import SEVERITY_RANK
from gradwatch.store.format import FINDINGS, META
from gradwatch.store.reader import read_findings, read_meta


def find_runs(root: Path, max_depth: int = 3) -> list[Path]:
    """Run directories (folders with a meta.json) at most ``max_depth`` levels below ``root``."""
    found = []
    if (root / META).is_file():
        found.append(root)
    frontier = [root]
    for _ in range(max_depth):
        nxt = []
        for d in frontier:
            try:
                children = sorted(p for p in d.iterdir() if p.is_dir())
            except OSError:
                continue
            for c in children:
                if (c / META).is_file():
                    found.append(c)
                else:
                    nxt.append(c)
        frontier = nxt
    return found


def verdict_of(findings: list[dict]) -> str:
    """The verdict a list of finding dicts implies (the same rule as ``gw.diagnose``)."""
    from gradwatch.diagnose import VERDICT_PRECEDENCE

    serious = [f for f in findings if SEVERITY_RANK.get(f.get("severity"), 0) >= 1]
    for kind in VERDICT_PRECEDENCE:
        if any(f.get("kind") == kind for f in serious):
            return kind
    return "healthy"


def summarize(run_dir: Path) -> dict:
    """One row of the listing, read from meta.json and findings.jsonl only."""
    try:
        meta = read_meta(run_dir)  # checks the shape and types of what is read below
    except RunDirectoryError:
        return {"run": str(run_dir), "status": "corrupt meta.json"}
    fpath = run_dir / FINDINGS
    with warnings.catch_warnings():  # a listing skips bad lines without a word per run
        warnings.simplefilter("ignore")
        findings = read_findings(fpath)
    diagnosed = bool(meta.get("diagnosed")) or (fpath.is_file() and fpath.stat().st_size > 0)
    return {
        "run": str(run_dir),
        "status": meta.get("status", "?"),
        "steps": meta.get("steps_recorded", 0),
        "layers": len(meta.get("layers", [])),
        "model": meta.get("model", {}).get("class", "?"),
        "updated": meta.get("updated"),
        "verdict": verdict_of(findings) if diagnosed else "not diagnosed",
        "findings": len(findings),
    }


def run(args: argparse.Namespace) -> int:
    """Print the table (or JSON) of runs."""
    root = existing_dir("DIR", args.dir)
    rows = [summarize(p) for p in find_runs(root)]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    console = Console()
    if not rows:
        console.print(f"no gradwatch runs under {root}")
        return 0
    table = Table(title=f"gradwatch runs under {root}")
    for col in ("run", "model", "status", "steps", "layers", "verdict", "updated"):
        table.add_column(col, overflow="fold")
    colour = {"healthy": "green", "not diagnosed": "dim"}
    for r in rows:
        upd = r.get("updated")
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(upd)) if upd else ""
        v = r.get("verdict", "?")
        table.add_row(r["run"], r.get("model", ""), r.get("status", ""), str(r.get("steps", "")),
                      str(r.get("layers", "")), f"[{colour.get(v, 'red')}]{v}[/]", when)
    console.print(table)
    return 0


def register(subparsers) -> None:
    """Add ``gradwatch runs``."""
    p = subparsers.add_parser("runs", help="list runs with their verdicts",
                              description=__doc__.splitlines()[0])
    p.add_argument("dir", nargs="?", default="runs", help="folder to search (default: runs)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=run)
