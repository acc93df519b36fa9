"""``gradwatch check`` end to end: a subprocess as a user runs it, and in-process for speed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from gradwatch.cli import main

REPO = Path(__file__).resolve().parents[2]
FACTORY = Path(__file__).resolve().parent / "factory_file.py"


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "gradwatch.cli", "check", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )


def test_cli_json_end_to_end():
    rel = FACTORY.relative_to(REPO)
    proc = run_cli(f"{rel}:make", "--input-shape", "8,16", "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["verdict"] == "vanishing"
    assert [row["layer"] for row in out["table"]] == [str(2 * i) for i in range(12)]
    (f,) = [f for f in out["findings"] if f["kind"] == "vanishing"]
    assert f["evidence"]["backprop_ratio"] < 1e-6 and f["steps"] is None
    assert out["table"][-1]["backprop_ratio"] == 1.0


def test_cli_missing_factory_is_one_line_exit_2():
    proc = run_cli(f"{FACTORY}:nope", "--input-shape", "8,16")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr
    assert "nope" in lines[0] and "make" in lines[0]


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        ([f"{FACTORY}:make", "--input-shape", "8,15"], "(..., 16)"),
        ([f"{FACTORY}:make", "--input-shape", "8,x"], "--input-shape"),
        ([f"{FACTORY}:make"], "--input-shape"),
        ([f"{FACTORY.parent / 'missing.py'}:make", "--input-shape", "8,16"], "does not exist"),
        ([f"{FACTORY}", "--input-shape", "8,16"], ":FACTORY"),
        ([f"{FACTORY}:broken", "--input-shape", "8,16"], "factory failed on purpose"),
        ([f"{FACTORY}:make", "--input-shape", "8,16", "--targets", "classes"], "classes:K"),
    ],
)
def test_cli_errors_are_one_line(argv, needle, capsys):
    assert main(["check", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("gradwatch check: error:")
    assert needle in err[0]


def test_cli_factory_with_its_own_inputs_and_targets(capsys):
    assert (
        main(["check", f"{FACTORY}:make_healthy_with_inputs", "--targets", "classes:4", "--json"])
        == 0
    )
    out = json.loads(capsys.readouterr().out)
    assert out["verdict"] == "healthy"
    assert len(out["table"]) == 2 and out["findings"] == []


def test_cli_text_output(capsys):
    assert main(["check", f"{FACTORY}:make", "--input-shape", "8,16"]) == 0
    out = capsys.readouterr().out
    assert "verdict: vanishing" in out and "vanishing:" in out and "█" in out


def test_cli_help_says_the_file_is_run(capsys):
    with pytest.raises(SystemExit):
        main(["check", "--help"])
    assert "RUNS FILE.py" in capsys.readouterr().out
