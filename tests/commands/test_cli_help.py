"""The command line answers ``--help`` at once: building the parser imports no torch, and the
help texts show no docstring markup."""

from __future__ import annotations

import subprocess
import sys

import pytest

COMMANDS = ["demo", "runs", "check", "theory", "fix", "experiment", "report"]

PROBE = """
import sys
from gradwatch.cli import build_parser
parser = build_parser()
heavy = sorted(m for m in ("torch", "pandas", "matplotlib", "pyarrow") if m in sys.modules)
print(",".join(heavy) or "none")
"""


def test_building_the_parser_imports_no_torch():
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "none", out.stdout


@pytest.mark.parametrize("command", [None, *COMMANDS])
def test_help_loads_no_torch_and_shows_no_markup(command):
    args = [command, "--help"] if command else ["--help"]
    code = ("import runpy, sys; sys.argv = ['gradwatch', *sys.argv[1:]]\n"
            "try:\n    runpy.run_module('gradwatch.cli', run_name='__main__')\n"
            "except SystemExit:\n    pass\n"
            "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH')")
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                         check=True)
    assert out.stdout.rstrip().endswith("NO-TORCH"), out.stdout[-300:]
    assert "usage: gradwatch" in out.stdout
    assert "``" not in out.stdout and ":func:" not in out.stdout and "**" not in out.stdout


def test_hard_coded_names_match_the_library():
    """The CLI writes these out to avoid importing torch; they must stay the library's."""
    from gradwatch.commands.fix import KINDS
    from gradwatch.commands.theory import KNOWN_ACTIVATIONS
    from gradwatch.remedies.fix import KINDS as LIB_KINDS
    from gradwatch.theory.activations import KNOWN_ACTIVATIONS as LIB_ACTIVATIONS

    assert KINDS == LIB_KINDS
    assert KNOWN_ACTIVATIONS == LIB_ACTIVATIONS


def test_package_names_stay_the_functions_after_a_submodule_import():
    code = ("import gradwatch as gw, gradwatch.check, gradwatch.diagnose, sys\n"
            "print(callable(gw.check), callable(gw.diagnose), gw.check.__module__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.split() == ["True", "True", "gradwatch.check"]


def test_plain_removes_docstring_markup():
    from gradwatch.cli import plain

    assert plain("``gradwatch report RUN_DIR``: see :func:`gradwatch.fix` **now**") == (
        "gradwatch report RUN_DIR: see gradwatch.fix now"
    )
