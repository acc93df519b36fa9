"""``gradwatch report RUN_DIR``: terminal summary, HTML report, optional figures and TensorBoard."""

from __future__ import annotations

import argparse
from pathlib import Path

from gradwatch.commands.args import out_dir, out_file
from gradwatch.errors import GradwatchValueError


def run(args: argparse.Namespace) -> int:
    """Print the summary, write the HTML report (and figures / TensorBoard logs if asked)."""
    # Imported here so that `gradwatch --help` and the other commands do not load matplotlib.
    from rich.console import Console

    from gradwatch.report import export_tensorboard, print_summary, save_figures, write_html
    from gradwatch.store.reader import load

    if not args.run_dir:
        raise GradwatchValueError("RUN_DIR is an empty path; give the run directory")
    run_dir = Path(args.run_dir)
    # every output is checked before any is written
    out = out_file("-o", args.output) if args.output is not None else run_dir / "report.html"
    figures = out_dir("--figures", args.figures)
    tensorboard = out_dir("--tensorboard", args.tensorboard)
    loaded = load(run_dir)  # RunDirectoryError for a missing, empty or foreign directory
    console = Console()
    print_summary(loaded, console=console)
    try:
        path = write_html(loaded, out)
    except OSError as exc:
        raise GradwatchValueError(f"-o {str(out)!r}: cannot write the report ({exc})") from None
    console.print(f"HTML report: {path}", highlight=False, soft_wrap=True)
    if figures is not None:
        try:
            written = save_figures(loaded, figures)
        except OSError as exc:
            raise GradwatchValueError(
                f"--figures {args.figures!r}: cannot write the figures ({exc})"
            ) from None
        console.print(f"figures: {len(written)} files in {args.figures}", highlight=False,
                      soft_wrap=True)
    if tensorboard is not None:
        try:
            logdir = export_tensorboard(loaded, tensorboard)
        except OSError as exc:
            raise GradwatchValueError(
                f"--tensorboard {args.tensorboard!r}: cannot write the logs ({exc})"
            ) from None
        console.print(f"TensorBoard logs: {logdir} (tensorboard --logdir {logdir})",
                      highlight=False, soft_wrap=True)
    return 0


def register(subparsers) -> None:
    """Add ``gradwatch report``."""
    p = subparsers.add_parser(
        "report",
        help="summarise a run and write its HTML report",
        description=__doc__.splitlines()[0],
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="the run directory (gw.watch(run_dir=...))")
    p.add_argument("-o", "--output", metavar="FILE",
                   help="HTML file to write (default: RUN_DIR/report.html)")
    p.add_argument("--tensorboard", metavar="DIR",
                   help="also export the statistics as TensorBoard scalars to DIR "
                        "(needs pip install gradwatch[tensorboard])")
    p.add_argument("--figures", metavar="DIR",
                   help="also save every figure as PNG and SVG in DIR")
    p.set_defaults(func=run)
