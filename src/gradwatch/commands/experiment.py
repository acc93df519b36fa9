"""``gradwatch experiment NAME``: reproduce a classic result and check the paper's claims.

Every run covers several seeds (``--seeds``; 3 in full mode, 1 in ``--quick`` mode) at
``--threads`` torch threads, and each claim is judged over the seeds: it must hold in every
seed, or in more than half of them where the claim says so ("[in ≥ 2 of 3 seeds]").

Exit code 0 when every claim holds, 1 when one does not, 2 for bad input. In ``--quick``
mode, claims that need the full-size run are shown as "not run in quick mode" and do not
decide the exit code.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from gradwatch.commands.args import check_at_least, check_seed, out_dir
from gradwatch.errors import GradwatchValueError


def _list(console: Console) -> int:
    from gradwatch.experiments import EXPERIMENTS

    table = Table(title="gradwatch experiments", show_lines=False)
    table.add_column("name", no_wrap=True)
    table.add_column("what it shows", overflow="fold")
    table.add_column("paper", overflow="fold")
    for spec in EXPERIMENTS.values():
        table.add_row(spec.name, escape(spec.description), escape(spec.paper))
    console.print(table)
    return 0


def _report(console: Console, result: dict) -> bool:
    """Print one experiment's claims; return whether its decisive claims all hold."""
    from gradwatch.experiments.base import NOT_RUN, outcome, status

    quick = bool(result.get("quick"))
    mode = "quick" if quick else "full"
    seeds = result["seeds"]
    which = f"seed {seeds[0]}" if len(seeds) == 1 else f"seeds {', '.join(map(str, seeds))}"
    threads = result.get("threads", 1)
    console.print(
        f"[bold]{result['name']}[/] ({mode}, {which}, {threads} thread"
        f"{'s' if threads != 1 else ''}; {result['runtime_s']:.1f} s wall, "
        f"{result.get('cpu_s') or 0:.1f} s CPU)"
    )
    skipped = 0
    for c in result["claims"]:
        state = status(c, quick)
        if state == NOT_RUN:
            skipped += 1
            console.print(f"  [dim]– {escape(c['claim'])} ({NOT_RUN})[/]")
        else:
            mark = "[green]✓[/]" if state == "holds" else "[red]✗[/]"
            held = c.get("held_in")
            tally = "" if held is None else f" [dim](held in {held} of {len(seeds)})[/]"
            console.print(f"  {mark} {escape(c['claim'])}{tally}")
    if skipped:
        console.print(
            f"  [dim]{skipped} claim(s) need the full-size run: not run in quick mode, "
            "not counted in the exit code[/]"
        )
    ok = outcome(result)
    console.print(
        f"  outputs: {result['out_dir']} (result.json, figures/, seed-<s>/runs/)"
    )
    if not ok:
        console.print("  [red]a claim of the paper does not hold in this run[/]")
    return ok


def run(args: argparse.Namespace) -> int:
    """Run one experiment (or all) and print its claims."""
    from gradwatch.experiments import EXPERIMENTS, get, run_experiment

    console = Console(highlight=False)
    if args.list:
        return _list(console)
    if args.name is None:
        raise GradwatchValueError(
            f"give an experiment NAME ({', '.join(EXPERIMENTS)} or 'all'), or --list"
        )
    names = list(EXPERIMENTS) if args.name == "all" else [get(args.name).name]
    check_seed(args.seed)
    if args.seeds is not None:
        check_at_least("--seeds", args.seeds)
        check_seed(args.seed + args.seeds - 1)  # the last seed, too
    check_at_least("--threads", args.threads)
    out_dir("--out", args.out)
    out_root = (
        Path(args.out) if args.out is not None
        else Path("experiments") / time.strftime("%Y%m%d-%H%M%S")
    )
    failed = []
    for name in names:
        out = out_root / name if (args.name == "all" or args.out is None) else out_root
        console.print(f"running {name}{' (quick)' if args.quick else ''} -> {out}")
        result = run_experiment(
            name,
            out,
            quick=args.quick,
            seed=args.seed,
            seeds=args.seeds,
            threads=args.threads,
            executor=args.executor,
            progress=False if args.no_progress else None,
        )
        if not _report(console, result):
            failed.append(name)
    if failed:
        console.print(f"[red]claims failed in: {', '.join(failed)}[/] (exit code 1)")
        return 1
    return 0


def register(subparsers) -> None:
    """Add ``gradwatch experiment``."""
    p = subparsers.add_parser(
        "experiment",
        help="reproduce a classic result (Glorot 2010, He 2015, residual, ...)",
        description=__doc__.splitlines()[0],
    )
    p.add_argument("name", nargs="?", help="experiment name, or 'all' (see --list)")
    p.add_argument("--list", action="store_true", help="list the experiments and exit")
    p.add_argument("--quick", action="store_true", help="small, fast version (well under a minute)")
    p.add_argument(
        "--out",
        default=None,
        help="output folder (default: experiments/<timestamp>/<name>; with all: a subfolder each)",
    )
    p.add_argument(
        "--seed", type=int, default=0, help="the first seed (default 0): SEED, SEED+1, …"
    )
    p.add_argument(
        "--seeds",
        type=int,
        default=None,
        help="how many seeds; each claim is judged over them (default: 3, or 1 with --quick)",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads while training (torch.set_num_threads; default 1)",
    )
    p.add_argument(
        "--executor",
        choices=("local", "ray"),
        default="local",
        help="where grids of runs execute (experiments that run grids)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)
