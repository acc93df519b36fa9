"""``gradwatch runs [DIR]``: list the run directories under DIR with their state and verdict.

The listing reads only ``meta.json``, ``findings.jsonl``, the lock file and the ``step`` column
of the Parquet parts, so it is quick and never needs torch. It tells the truth about each run:

- a run whose ``meta.json`` says "running" but whose writer is gone (the lock names a process
  of this host that no longer runs, e.g. a training killed with SIGKILL) is shown as
  ``crashed``, with the steps actually on disk rather than the count meta.json last saw;
- a run it cannot read (a ``meta.json`` that is not a JSON object, an unreadable part) is one
  row whose status says why; a bad line of ``findings.jsonl`` is skipped and counted.

One odd folder never aborts the listing.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from gradwatch.errors import GradwatchValueError
from gradwatch.jsonable import jsonable

#: File names of the run directory format (``gradwatch.store.format``), written out here so
#: that ``gradwatch runs`` does not import the store (and pandas) just to list folders.
META, FINDINGS, STATS_DIR = "meta.json", "findings.jsonl", "stats"


#: How deep ``gradwatch runs`` looks by default: an experiment's runs sit 4 levels below the
#: experiments folder (``experiments/<time>/<name>/runs/<run>``), 5 below the project.
MAX_DEPTH = 8
#: Most folders looked into: a listing of a huge tree stops there and says so.
MAX_FOLDERS = 50_000


def find_runs(root: Path, max_depth: int = MAX_DEPTH,
              max_folders: int = MAX_FOLDERS) -> tuple[list[Path], bool]:
    """Run directories (folders with a meta.json) at most ``max_depth`` levels below ``root``.

    The search goes breadth first, in name order; it does not look inside a run directory,
    a hidden folder (``.git``, ``.venv``) or a symbolic link to a folder (which could loop).

    Returns:
        (the run directories, whether the search stopped at ``max_folders`` folders).
    """
    found = []
    if (root / META).is_file():
        return [root], False
    frontier, seen = [root], 0
    for _ in range(max_depth):
        nxt = []
        for d in frontier:
            try:
                children = sorted(
                    p for p in d.iterdir()
                    if not p.name.startswith(".") and not p.is_symlink() and p.is_dir()
                )
            except OSError:
                continue
            for c in children:
                seen += 1
                if seen > max_folders:
                    return found, True
                if (c / META).is_file():
                    found.append(c)
                else:
                    nxt.append(c)
        frontier = nxt
    return found, False


def verdict_of(findings: list[dict]) -> str:
    """The verdict a list of finding dicts implies (the same rule as ``gw.diagnose``)."""
    from gradwatch.findings import SEVERITY_RANK
    from gradwatch.verdicts import VERDICT_PRECEDENCE, verdict_of_kind

    serious = {verdict_of_kind(str(f.get("kind"))) for f in findings
               if SEVERITY_RANK.get(f.get("severity"), 0) >= 1}
    for kind in VERDICT_PRECEDENCE:
        if kind in serious:
            return kind
    return "healthy"


def writer_alive(run_dir: Path) -> bool | None:
    """Whether the writer holding ``run_dir`` still runs.

    Returns:
        True, False (its process is gone), or None (no lock, or it cannot be told, e.g. a
        writer on another host).
    """
    from gradwatch.store.lock import read_lock

    info = read_lock(run_dir)
    return None if info is None else info.alive


def steps_on_disk(run_dir: Path) -> int:
    """How many distinct steps the Parquet parts of ``run_dir`` hold (reads the step column).

    Raises:
        OSError, ValueError: a part cannot be read (pyarrow's errors derive from these).
    """
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from gradwatch.store.format import live_parts

    steps: set[int] = set()
    for part in live_parts(run_dir / STATS_DIR):
        column = pq.read_table(part, columns=["step"]).column("step")
        steps.update(pc.unique(column).to_pylist())
    return len(steps)


def summarize(run_dir: Path) -> dict[str, Any]:
    """One row of the listing; a run that cannot be read is a row whose status says why."""
    row: dict[str, Any] = {"run": str(run_dir)}
    try:
        meta = json.loads((run_dir / META).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        return {**row, "status": f"unreadable meta.json ({type(exc).__name__})"}
    if not isinstance(meta, dict):
        return {**row, "status": f"unreadable meta.json (a JSON {type(meta).__name__}, "
                                 "not an object)"}
    findings, bad_lines = _read_findings(run_dir / FINDINGS)
    status = str(meta.get("status", "?"))
    steps: Any = meta.get("steps_recorded", 0)
    if status == "running" and writer_alive(run_dir) is False:
        status = "crashed"  # its writer died without closing the run (SIGKILL, power loss)
    if status != "closed":  # meta.json's count may be stale: count what is on disk
        try:
            steps = steps_on_disk(run_dir)
        except (OSError, ValueError) as exc:
            status = f"{status}; unreadable stats ({type(exc).__name__})"
    model = meta.get("model")
    layers = meta.get("layers")
    diagnosed = bool(meta.get("diagnosed")) or bool(findings) or bad_lines > 0
    verdict = verdict_of(findings) if diagnosed else "not diagnosed"
    if bad_lines:
        verdict += f" ({bad_lines} unreadable findings line{'s' if bad_lines > 1 else ''})"
    updated = meta.get("updated")
    return {
        **row,
        "status": status,
        "steps": steps if isinstance(steps, int) else "?",
        "layers": len(layers) if isinstance(layers, list) else "?",
        "model": str(model.get("class", "?")) if isinstance(model, dict) else "?",
        "updated": updated if isinstance(updated, int | float) else None,
        "verdict": verdict,
        "findings": len(findings),
    }


def _read_findings(path: Path) -> tuple[list[dict], int]:
    """(the finding dicts of findings.jsonl, the number of lines that are not one)."""
    if not path.is_file():
        return [], 0
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return [], 1
    found, bad = [], 0
    for line in lines:
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except ValueError:
            item = None
        if isinstance(item, dict):
            found.append(item)
        else:
            bad += 1
    return found, bad


def run(args: argparse.Namespace) -> int:
    """Print the table (or JSON) of runs."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from gradwatch.report.names import printable
    from gradwatch.wording import fold, name_room

    if not args.dir:
        raise GradwatchValueError("DIR is an empty path; give the folder that holds your runs")
    root = Path(args.dir)
    if not root.is_dir():
        raise GradwatchValueError(
            f"DIR {str(root)!r} is not a directory; give the folder that holds your runs"
        )
    if args.depth < 1:
        raise GradwatchValueError(f"--depth must be a positive integer, got {args.depth}")
    paths, stopped = find_runs(root, args.depth)
    if stopped:
        print(f"gradwatch runs: stopped after {MAX_FOLDERS} folders under {root}; give a "
              "narrower DIR or a smaller --depth", file=sys.stderr)
    rows = [summarize(p) for p in paths]
    if args.json:
        print(json.dumps(jsonable(rows), indent=2, allow_nan=False))
        return 0
    console = Console()
    if not rows:
        console.print(f"no gradwatch runs under {escape(printable(root))}")
        return 0
    table = Table(title=f"gradwatch runs under {escape(printable(root))}")
    narrow = console.width < 100
    stamp = "%Y-%m-%d\n%H:%M" if narrow else "%Y-%m-%d %H:%M"
    cells = []
    for r in rows:
        upd = r.get("updated")
        cells.append([  # names and words from meta.json: control characters made visible
            printable(r.get("model", "")), printable(r.get("status", "")),
            str(r.get("steps", "")), str(r.get("layers", "")), printable(r.get("verdict", "")),
            time.strftime(stamp, time.localtime(upd)) if upd else "",
        ])
    titles = ("model", "status", "steps", "layers", "verdict", "updated")
    # every column as wide as its longest line (at most 24); the run column takes the rest,
    # and a path longer than that goes on to the next line after a "/"
    widths = [min(24, max([len(t)] + [len(ln) for c in cells for ln in c[i].splitlines()]))
              for i, t in enumerate(titles)]
    names = [printable(_relative(Path(r["run"]), root)) for r in rows]
    room = min(max(len(n) for n in names), name_room(console.width, widths, boxed=True))
    table.add_column("run", no_wrap=True, min_width=min(room, 10), max_width=max(room, 3))
    for title, width in zip(titles, widths, strict=True):
        table.add_column(title, no_wrap=True, max_width=width)
    colour = {"healthy": "green", "not diagnosed": "dim"}
    for name, (model, status, steps, layers, v, when) in zip(names, cells, strict=True):
        table.add_row(
            escape(fold(name, room)),
            escape(model),
            escape(status) if status in ("closed", "running") else f"[red]{escape(status)}[/]",
            steps,
            layers,
            f"[{colour.get(v, 'red')}]{escape(v)}[/]" if v else "",
            when,
        )
    console.print(table)
    return 0


def register(subparsers: Any) -> None:
    """Add ``gradwatch runs``."""
    p = subparsers.add_parser("runs", help="list runs with their verdicts",
                              description=__doc__.splitlines()[0])
    p.add_argument("dir", nargs="?", default="runs", help="folder to search (default: runs)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--depth", type=int, default=MAX_DEPTH,
                   help=f"how many folder levels below DIR to look (default {MAX_DEPTH})")
    p.set_defaults(func=run)


def _relative(path: Path, root: Path) -> str:
    """``path`` relative to ``root`` (``.`` for the root itself), else as given."""
    try:
        rel = path.relative_to(root)
    except ValueError:
        return str(path)
    return str(rel) if str(rel) != "." else "."
