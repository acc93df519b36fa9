"""``gradwatch demo [--out DIR]``: the main job, on built-in data, in about two minutes."""

from __future__ import annotations

import argparse
import json
import re

from gradwatch.commands.args import check_at_least, check_seed, out_dir
from gradwatch.errors import GradwatchValueError
from gradwatch.jsonable import jsonable


def run(args: argparse.Namespace) -> int:
    """Run the demo and print where its report is."""
    from gradwatch.demo import DemoConfig, run_demo

    check_at_least("--depth", args.depth, 2)
    for name in ("steps", "width"):
        check_at_least(f"--{name}", getattr(args, name), 1)
    check_seed(args.seed)
    out_dir("--out", args.out)
    cfg = DemoConfig(depth=args.depth, width=args.width, steps=args.steps, seed=args.seed)
    try:
        cfg.check()  # sizes bounded before anything is allocated
    except GradwatchValueError as exc:  # in the options' spelling
        raise GradwatchValueError(re.sub(r"\b(depth|width|steps)\b", r"--\1", str(exc))) from None
    result = run_demo(args.out, cfg)
    if args.json:
        print(json.dumps(jsonable(result), indent=2, allow_nan=False))
    return 0


def register(subparsers) -> None:
    """Add ``gradwatch demo``."""
    p = subparsers.add_parser(
        "demo",
        help="watch a deep sigmoid net fail, diagnose it, fix it, watch it learn",
        description=(
            "On scikit-learn's digits: train a deep sigmoid MLP with standard init while "
            "gradwatch watches, show the vanishing-gradient diagnosis, apply gw.fix, train the "
            "fixed model the same way, and write a before/after HTML report."
        ),
    )
    p.add_argument("--out", default="runs/demo", help="output folder (default: runs/demo)")
    p.add_argument("--depth", type=int, default=16, help="hidden sigmoid layers (default 16)")
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--steps", type=int, default=400, help="training steps per model")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="also print the result as JSON")
    p.set_defaults(func=run)
