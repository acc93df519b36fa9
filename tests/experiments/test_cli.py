"""``gradwatch experiment``: listing, errors and exit codes, as a user runs it."""

import json
import subprocess
import sys

import pytest

from gradwatch import experiments
from gradwatch.cli import main
from gradwatch.experiments import ExperimentSpec


def test_list(capsys):
    assert main(["experiment", "--list"]) == 0
    out = capsys.readouterr().out
    for name in ("glorot2010", "he2015", "residual"):
        assert name in out
    assert "Glorot" in out and "Delving" in out


def test_unknown_name_exit_2_one_line():
    proc = subprocess.run(
        [sys.executable, "-m", "gradwatch.cli", "experiment", "nope"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "unknown experiment 'nope'" in lines[0] and "glorot2010" in lines[0]
    assert "Traceback" not in proc.stderr


def test_no_name(capsys):
    assert main(["experiment"]) == 2
    assert "--list" in capsys.readouterr().err


@pytest.fixture
def fake(monkeypatch):
    spec = ExperimentSpec("fake", "a stand-in", "nobody 2024", "tests.experiments.fake_experiment")
    monkeypatch.setitem(experiments.EXPERIMENTS, "fake", spec)
    return spec


def test_exit_codes_follow_claims(fake, tmp_path, capsys, monkeypatch):
    # quick: the failing claim is full-scale only -> exit 0, shown as not run, without ✗
    assert main(["experiment", "fake", "--quick", "--out", str(tmp_path / "q")]) == 0
    out = capsys.readouterr().out
    assert (
        "✓ x is positive" in out and "– y is positive (full scale) (not run in quick mode)" in out
    )
    assert "✗" not in out
    assert str(tmp_path / "q") in out
    claims = json.loads((tmp_path / "q" / "result.json").read_text())["claims"]
    assert [c["status"] for c in claims] == ["holds", "not run in quick mode"]
    # full mode: the same claim decides -> exit 1
    assert main(["experiment", "fake", "--out", str(tmp_path / "f")]) == 1
    out = capsys.readouterr().out
    assert "✗ y is positive" in out and "does not hold" in out
    claims = json.loads((tmp_path / "f" / "result.json").read_text())["claims"]
    assert [c["status"] for c in claims] == ["holds", "fails"]


def test_executor_passed_through(fake, tmp_path):
    assert main(["experiment", "fake", "--quick", "--executor", "ray", "--out", str(tmp_path)]) == 0
    numbers = json.loads((tmp_path / "result.json").read_text())["numbers"]
    assert numbers["executor"] == "ray"


def test_bad_seed(capsys):
    assert main(["experiment", "he2015", "--seed", "-1"]) == 2


def test_all_runs_every_registered(fake, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(experiments, "EXPERIMENTS", {"fake": fake})
    assert main(["experiment", "all", "--quick", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "fake" / "result.json").is_file()
    assert "fake (quick" in capsys.readouterr().out
