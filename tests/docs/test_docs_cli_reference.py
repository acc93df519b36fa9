"""docs/reference/cli.md covers every command and every option of ``gradwatch``, and every
``gradwatch ...`` command line shown in the documentation parses."""

from __future__ import annotations

import argparse
import re
import shlex

import pytest

from gradwatch.cli import build_parser
from tests.docs.markdown_blocks import DOCS, blocks, pages

CLI_PAGE = DOCS / "reference" / "cli.md"


def _commands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    raise AssertionError("gradwatch has no subcommands")


def _sections(text: str) -> dict[str, str]:
    """``## `gradwatch NAME` `` heading -> the text up to the next ``## `` heading."""
    parts = re.split(r"^## ", text, flags=re.M)
    out = {}
    for part in parts[1:]:
        m = re.match(r"`gradwatch ([\w-]+)`", part)
        if m:
            out[m.group(1)] = part
    return out


COMMANDS = _commands()


def test_every_command_has_a_section():
    sections = _sections(CLI_PAGE.read_text(encoding="utf-8"))
    missing = sorted(set(COMMANDS) - set(sections))
    assert not missing, f"docs/reference/cli.md has no '## `gradwatch NAME`' section for {missing}"
    stale = sorted(set(sections) - set(COMMANDS))
    assert not stale, f"docs/reference/cli.md documents commands that no longer exist: {stale}"


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_option_is_documented(name):
    section = _sections(CLI_PAGE.read_text(encoding="utf-8"))[name]
    missing = []
    for action in COMMANDS[name]._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        if action.option_strings:
            missing += [f"{o}" for o in action.option_strings if f"`{o}" not in section]
        else:  # a positional argument: its metavar (or name) in a code span
            shown = action.metavar or action.dest
            if f"`{shown}`" not in section:
                missing.append(shown)
    assert not missing, f"gradwatch {name}: not in docs/reference/cli.md: {missing}"


def _command_lines():
    for page in pages():
        for block in blocks(page):
            if block.lang not in ("bash", "sh", "console", "shell"):
                continue
            for line in block.code.splitlines():
                line = line.split(" #")[0].strip().removeprefix("$ ")
                if line.startswith("gradwatch "):
                    yield pytest.param(line, id=f"{block.page}:{line[10:40]}")


@pytest.mark.parametrize("line", list(_command_lines()))
def test_command_lines_in_the_docs_parse(line):
    argv = shlex.split(line)[1:]
    if any(a in ("-h", "--help", "--version") for a in argv):
        return
    try:
        build_parser().parse_args(argv)
    except SystemExit as exc:  # argparse exits on a bad argument
        pytest.fail(f"`{line}` does not parse (exit {exc.code})")
