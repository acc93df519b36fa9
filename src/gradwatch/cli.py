"""The ``gradwatch`` command line.

Each command lives in its own module that exposes ``register(subparsers)``; this file only
collects them and turns gradwatch errors into a one-line message and exit code 2.

Building the parser imports no torch (the command modules import it inside their ``run``), so
``gradwatch --help`` and every ``gradwatch COMMAND --help`` answer at once. Help texts are
often taken from docstrings: their reStructuredText inline markup is removed before printing.
"""

from __future__ import annotations

import argparse
import importlib
import os
import re
import sys
from collections.abc import Sequence
from typing import NoReturn

from gradwatch.errors import GradwatchError

#: Modules that define commands, in the order ``gradwatch --help`` lists them.
COMMAND_MODULES = [
    "gradwatch.commands.demo",
    "gradwatch.commands.runs",
    "gradwatch.commands.check",
    "gradwatch.commands.theory",
    "gradwatch.commands.fix",
    "gradwatch.commands.experiment",
    "gradwatch.commands.report",
]


class CommandError(GradwatchError):
    """A command-line argument is wrong; reported as one line, exit code 2."""


class OneLineParser(argparse.ArgumentParser):
    """An argparse parser whose usage errors are one line on stderr (exit code 2).

    argparse prints the whole usage block before the error; a user needs the error, and the
    pointer to ``--help``. Subcommand parsers inherit the class.
    """

    def error(self, message: str) -> NoReturn:
        """Print ``prog: error: message`` as one line and exit with code 2."""
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


_MARKUP = re.compile(r"``(.+?)``|:(?:func|class|mod|meth|data|attr):`~?([^`]+)`|\*\*(.+?)\*\*")


def plain(text: str | None) -> str | None:
    """``text`` without reStructuredText inline markup (````x````, ``:func:`x```, ``**x**``)."""
    if text is None:
        return None
    return _MARKUP.sub(lambda m: next(g for g in m.groups() if g is not None), text)


def _clean_help(parser: argparse.ArgumentParser) -> None:
    """Remove docstring markup from a parser's texts, its arguments' and its commands'."""
    parser.description = plain(parser.description)
    parser.epilog = plain(parser.epilog)
    for action in parser._actions:
        if isinstance(action.help, str):
            action.help = plain(action.help)
        if isinstance(action, argparse._SubParsersAction):
            for choice in action._choices_actions:
                choice.help = plain(choice.help)
            for sub in set(action.choices.values()):
                _clean_help(sub)


def build_parser() -> argparse.ArgumentParser:
    """Return the top-level parser with every command registered."""
    from gradwatch.version import __version__

    parser = OneLineParser(
        prog="gradwatch",
        description="Find, explain and fix vanishing and exploding gradients in PyTorch models.",
    )
    parser.add_argument("--version", action="version", version=f"gradwatch {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for mod_name in COMMAND_MODULES:
        importlib.import_module(mod_name).register(sub)
    _clean_help(parser)
    return parser


#: Exit code when the reader of the output goes away (``gradwatch runs --json | head``):
#: 128 + SIGPIPE, what a shell reports for a program the broken pipe ended.
BROKEN_PIPE_EXIT = 141


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        code = int(args.func(args) or 0)
        sys.stdout.flush()  # a broken pipe shows here, not at exit as "Exception ignored"
        return code
    except BrokenPipeError:
        return _broken_pipe()
    except GradwatchError as exc:
        print(f"gradwatch {args.command}: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except (OSError, MemoryError) as exc:
        # a file-system or memory fault no check foresaw: still one line, no traceback
        print(f"gradwatch {args.command}: error: {type(exc).__name__}: {_one_line(exc)}",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"gradwatch {args.command}: interrupted", file=sys.stderr)
        return 130


def _broken_pipe() -> int:
    """The reader of stdout left (``| head``): stop quietly, as ``cat`` would.

    Python's advice (the ``signal`` module's documentation, "Note on SIGPIPE"): point stdout
    at /dev/null so that the interpreter's last flush at exit finds nothing to fail on.
    """
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # stdout without a file descriptor (a test's StringIO)
        pass
    return BROKEN_PIPE_EXIT


def _one_line(exc: BaseException) -> str:
    from gradwatch.report.names import printable  # an error may quote a layer or file name

    return printable(" ".join(str(exc).split())) or type(exc).__name__


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
