"""``gradwatch fix``: check a model, apply remedies to a copy, show before and after.

    gradwatch fix FILE.py:FACTORY --input-shape 8,64 [--allow init,activation]
                  [--save fixed.pt] [--json]

Runs FILE.py (its top-level code executes), builds the model with FACTORY() (or takes
``(model, inputs[, targets])`` from it; loading is shared with ``gradwatch check``), makes a
seeded random batch of the given shape when the factory gives no inputs, runs
:func:`gradwatch.fix` and prints the verdicts, the remedies applied and the per-layer
back-propagated signal before and after. ``--save`` writes only the fixed model's state dict
(``torch.save(fixed.state_dict(), path)``), never a pickled module; when the architecture
changed, the new model is printed, since the weights only load into that architecture.
"""

from __future__ import annotations

import argparse
import json
import math
import re
from pathlib import Path
from typing import Any

from gradwatch.commands.args import check_seed, out_file
from gradwatch.commands.check import add_model_arguments
from gradwatch.errors import GradwatchError, GradwatchValueError
from gradwatch.jsonable import jsonable

#: Most per-layer rows printed; the middle of a longer table is elided.
MAX_ROWS = 30
#: The kinds of change ``--allow`` takes: ``gradwatch.remedies.fix.KINDS``, written out here
#: so that ``gradwatch fix --help`` does not import torch (a test checks they agree).
KINDS = ("init", "activation", "normalization", "residual")


def register(subparsers: Any) -> None:
    """Add the ``fix`` command to the gradwatch parser."""
    parser = subparsers.add_parser(
        "fix",
        help="apply remedies (init, activation, norm, residual) to a copy and verify them",
        description=(
            "Check a model on a random batch, apply remedies to a copy until the check says "
            "healthy, and print the verdicts and the per-layer back-propagated signal before "
            "and after. WARNING: this imports and so RUNS FILE.py, then calls FACTORY() to get "
            "the model (or a (model, inputs) or (model, inputs, targets) tuple)."
        ),
        epilog=(
            "--save writes only the state dict (torch.save(fixed.state_dict(), PATH)). To "
            "load it you need the fixed architecture: with --allow init it is your model's "
            "own; otherwise the command prints the new architecture, which you rebuild "
            "(e.g. with the same gradwatch remedies) before "
            "model.load_state_dict(torch.load(PATH, weights_only=True))."
        ),
    )
    add_model_arguments(parser, "the loss gw.check uses without them")
    parser.add_argument(
        "--allow",
        default=",".join(KINDS),
        help=f"kinds of change allowed, comma-separated (default: {','.join(KINDS)}); "
        "'init' alone keeps the architecture",
    )
    parser.add_argument(
        "--max-rounds", type=int, default=4, help="most remedies applied (default 4)"
    )
    parser.add_argument(
        "--seed", type=int, default=0,
        help="seed of the model's weights (torch.manual_seed before FACTORY() is called), the "
        "random batch and the new weights (default 0)",
    )
    parser.add_argument(
        "--save",
        metavar="PATH",
        default=None,
        help="write the fixed model's state dict (weights only, no pickled module) here",
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Load the model, fix it, print the report, save the weights; return the exit code."""
    import torch

    from gradwatch.commands.check import (
        input_dims,
        load_model,
        random_inputs,
        random_targets,
        seed_everything,
    )
    from gradwatch.remedies.fix import check_allow, fix

    try:
        allow = check_allow([a.strip() for a in args.allow.split(",") if a.strip()])
    except GradwatchError as err:  # the same error, in this command's syntax
        raise type(err)(cli_syntax(str(err))) from None
    check_seed(args.seed)
    if args.save is not None:
        out_file("--save", args.save)
        if not Path(args.save).resolve().parent.is_dir():
            raise GradwatchValueError(
                f"--save {args.save!r}: the folder {str(Path(args.save).parent)!r} does not "
                "exist; create it or pass another path"
            )
    if args.input_shape is not None:
        input_dims(args.input_shape)  # a bad shape fails before FILE.py runs
    seed_everything(args.seed)  # the factory's weights are drawn from torch's generator
    model, inputs, targets = load_model(args.model)
    if inputs is None:
        if args.input_shape is None:
            raise GradwatchValueError(
                f"{args.model} gives no inputs; pass --input-shape, e.g. --input-shape 8,64"
            )
        inputs = random_inputs(args.input_shape, args.seed)
    if args.targets is not None:
        first = inputs[0] if isinstance(inputs, tuple | list) else inputs
        targets = random_targets(args.targets, int(first.shape[0]), args.seed)
    torch.manual_seed(args.seed)  # the new weights are drawn from torch's global generator
    fixed, report = fix(model, inputs, targets, allow=allow, max_rounds=args.max_rounds)
    if args.save:
        _save(fixed, args.save)
    if args.json:
        print(json.dumps(jsonable({**report.to_dict(), "saved": args.save}), allow_nan=False))
    else:
        _print_report(report, args.save)
    return 0


def _save(model: Any, path: str) -> None:
    import torch

    try:
        torch.save(model.state_dict(), path)
    except (OSError, RuntimeError) as err:
        raise GradwatchValueError(
            f"--save {path!r}: cannot write the state dict ({err}); pass a writable path"
        ) from err


def _print_report(report: Any, saved: str | None) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table
    from rich.text import Text

    from gradwatch.report.names import printable, printable_lines
    from gradwatch.report.remedy_text import describe_remedy

    console = Console(highlight=False)
    style = {"healthy": "green"}
    before, after = report.verdict_before, report.verdict_after
    console.print(
        f"[bold]verdict before:[/bold] [{style.get(before, 'red')}]{before}[/]    "
        f"[bold]verdict after:[/bold] [{style.get(after, 'red')}]{after}[/]"
    )
    for finding in report.before.findings:
        console.print(f"  found: [{printable(finding.kind)}] {printable(finding.message)}",
                      markup=False)
    if not report.applied:
        console.print(
            "nothing applied: the model is already healthy"
            if before == "healthy"
            else "nothing applied: no allowed remedy made it measurably better"
        )
    else:
        applied = Table(title="remedies applied, in order")
        for column in ("#", "remedy", "what", "verdict after"):
            applied.add_column(column)
        for i, (name, details) in enumerate(report.applied, 1):
            what = describe_remedy(name, {k: v for k, v in details.items() if k != "verdict"})
            applied.add_row(str(i), Text(printable(name)), Text(printable(what)),
                            str(details.get("verdict", "")))
        console.print(applied)
    console.print(_layer_table(report))
    for rec in report.recommendations:
        console.print(f"[yellow]recommended:[/yellow] {escape(cli_syntax(rec))}")
    if report.changed_architecture:
        console.print(
            "[bold]The architecture changed.[/bold] "
            + ("The saved weights load only into this model:" if saved else
               "The fixed model is this one (its weights load only into it; "
               "--save PATH writes them):")
        )
        console.print(printable_lines(report.new_architecture), markup=False)
    elif report.applied:
        console.print(
            "Same architecture: the saved weights load into your model as it is." if saved
            else "Same architecture: only weights changed; --save PATH writes them, and they "
            "load into your model as it is."
        )
    if saved:
        console.print(
            f"saved the state dict to {Path(saved)}; load it with "
            f"model.load_state_dict(torch.load({str(saved)!r}, weights_only=True))",
            markup=False,
        )


def _layer_table(report: Any) -> Any:
    from rich.table import Table
    from rich.text import Text

    from gradwatch.report.names import printable

    df = report.table()
    table = Table(title="back-propagated signal ‖∂loss/∂output‖ and weight gradient per layer")
    for column in ("layer", "type", "backprop before", "backprop after", "grad before", "after"):
        wrap = column in ("layer", "type")
        table.add_column(column, justify="left" if wrap else "right",
                         overflow="fold" if wrap else "ellipsis", no_wrap=not wrap)
    records = df.to_dict(orient="records")
    if len(records) > MAX_ROWS:
        half = MAX_ROWS // 2
        records = [*records[:half], None, *records[-half:]]
    for rec in records:
        if rec is None:
            table.add_row("...", "", "", "", "", "")
            continue
        name = rec["layer"] if isinstance(rec["layer"], str) else f"({rec['layer_before']})"
        table.add_row(
            Text(printable(name)),
            Text(printable(rec["type"])),
            *(
                _fmt(rec[c])
                for c in (
                    "backprop_norm_before",
                    "backprop_norm_after",
                    "grad_norm_before",
                    "grad_norm_after",
                )
            ),
        )
    return table


_ALLOW = re.compile(r"\ballow=\(([^)]*)\)|^allow\b(?!=)")
_KWARG = re.compile(r"\b(max_rounds)=(\w+)")


def cli_syntax(text: str) -> str:
    """Advice written for the Python API, in this command's syntax.

    ``allow=("init", "activation")`` becomes ``--allow init,activation``, a message that
    starts with the argument name ``allow`` starts with ``--allow``, and ``max_rounds=4``
    becomes ``--max-rounds 4``.
    """

    def allow(m: re.Match[str]) -> str:
        if m.group(1) is None:
            return "--allow"
        kinds = re.findall(r"[\"']([^\"']+)[\"']", m.group(1))
        return "--allow " + ",".join(kinds)

    text = _ALLOW.sub(allow, text)
    return _KWARG.sub(lambda m: f"--{m.group(1).replace('_', '-')} {m.group(2)}", text)


def _fmt(x: Any) -> str:
    return "" if not isinstance(x, float) or math.isnan(x) else f"{x:.3g}"
