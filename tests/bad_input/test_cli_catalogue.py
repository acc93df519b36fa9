"""The bad-input catalogue of the command line, generated from :mod:`tests.bad_input.cli_table`.

Each case runs ``gradwatch.cli.main`` in-process with one bad option and asserts what a user
sees: exit code 2, one line on stderr naming the option, and no traceback. A bad value that
runs the command anyway fails the case.
"""

from __future__ import annotations

import pytest

from tests.bad_input.cli_table import cli_cases, names_option, run_cli
from tests.bad_input.places import make_places

CASES = cli_cases()


@pytest.fixture(scope="module")
def places(tmp_path_factory):
    return make_places(tmp_path_factory.mktemp("bad_cli"))


@pytest.mark.parametrize("argv,word", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_cli_input_exits_2_with_one_line_naming_the_option(places, argv, word):
    code, out, err = run_cli(argv, places)
    assert "Traceback" not in err, err
    assert code == 2, f"exit code {code!r} (accepted?): {out[-500:]} {err[-500:]}"
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert names_option(lines[0], word), lines[0]


def test_the_cli_catalogue_covers_every_command():
    commands = {c[0].split("/")[0] for c in CASES}
    assert commands == {"demo", "runs", "check", "theory", "fix", "experiment", "report"}
    assert len({c[0] for c in CASES}) == len(CASES), "case ids must be unique"
