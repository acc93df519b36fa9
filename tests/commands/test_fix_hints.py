"""``gradwatch fix`` gives its advice in its own syntax (flags), not in Python's."""

from __future__ import annotations

import subprocess
import sys

from gradwatch.commands.fix import cli_syntax

MODEL = """
from torch import nn
def make():
    layers = []
    for _ in range(10):
        layers += [nn.Linear(16, 16), nn.Sigmoid()]
    return nn.Sequential(*layers, nn.Linear(16, 4))
"""


def test_cli_syntax_rewrites_python_arguments_as_flags():
    assert cli_syntax('still vanishing: allow more kinds (e.g. allow=("init", "activation"))') == (
        "still vanishing: allow more kinds (e.g. --allow init,activation)"
    )
    assert cli_syntax("allow has unknown kinds ['x'] (e.g. allow=(\"init\",) to keep it)") == (
        "--allow has unknown kinds ['x'] (e.g. --allow init to keep it)"
    )
    assert cli_syntax("raise max_rounds=8") == "raise --max-rounds 8"


def test_fix_with_init_only_advises_the_flag(tmp_path):
    (tmp_path / "m.py").write_text(MODEL)
    proc = subprocess.run(
        [sys.executable, "-m", "gradwatch.cli", "fix", f"{tmp_path / 'm.py'}:make",
         "--input-shape", "32,16", "--allow", "init"],
        capture_output=True, text=True, timeout=600, env={"COLUMNS": "200",
                                                          **__import__("os").environ},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = " ".join(proc.stdout.split())
    assert "allow=(" not in out
    if "still vanishing" in out:  # the advice appears when init alone does not heal it
        assert "--allow init,activation" in out
    # an applied remedy is described whole: no "<17 items>" placeholder
    assert "items>" not in out and "remedies applied" in out


def test_bad_allow_names_the_flag(tmp_path):
    (tmp_path / "m.py").write_text(MODEL)
    proc = subprocess.run(
        [sys.executable, "-m", "gradwatch.cli", "fix", f"{tmp_path / 'm.py'}:make",
         "--input-shape", "32,16", "--allow", "init,bogus"],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 2
    assert "--allow init" in proc.stderr and "allow=(" not in proc.stderr
