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
    # quick (1 seed): the failing claim is full-scale only -> exit 0, shown as not run
    assert main(["experiment", "fake", "--quick", "--out", str(tmp_path / "q")]) == 0
    out = capsys.readouterr().out
    assert "✓ x is positive [in 1 of 1 seed]" in out
    assert "– y is positive (full scale) [in 1 of 1 seed] (not run in quick mode)" in out
    assert "✗" not in out and "seed 0, 1 thread" in out
    assert str(tmp_path / "q") in out
    result = json.loads((tmp_path / "q" / "result.json").read_text())
    assert [c["status"] for c in result["claims"]] == ["holds", "not run in quick mode", "holds"]
    assert result["seeds"] == [0] and result["threads"] == 1
    # full mode: 3 seeds by default, and the full-scale claim decides -> exit 1
    assert main(["experiment", "fake", "--out", str(tmp_path / "f")]) == 1
    out = capsys.readouterr().out
    assert "seeds 0, 1, 2" in out
    assert "✗ y is positive (full scale) [in 3 of 3 seeds] (held in 0 of 3)" in out
    assert "✓ z is positive [in ≥ 2 of 3 seeds] (held in 2 of 3)" in out
    assert "does not hold" in out
    result = json.loads((tmp_path / "f" / "result.json").read_text())
    assert [c["status"] for c in result["claims"]] == ["holds", "fails", "holds"]
    assert result["seeds"] == [0, 1, 2] and [s["seed"] for s in result["per_seed"]] == [0, 1, 2]
    for s in (0, 1, 2):  # each seed's own folder and record
        seed = json.loads((tmp_path / "f" / f"seed-{s}" / "result.json").read_text())
        assert seed["seed"] == s and seed["numbers"] == result["per_seed"][s]["numbers"]


def test_seeds_decide_a_majority_claim(fake, tmp_path, capsys):
    # z holds in even seeds only: 2 of seeds 0..2 (enough), 1 of seeds 1..3 (not enough)
    args = ["experiment", "fake", "--quick", "--seeds", "3"]
    assert main([*args, "--out", str(tmp_path / "a")]) == 0
    capsys.readouterr()
    args = [*args, "--seed", "1"]
    assert main([*args, "--out", str(tmp_path / "b")]) == 1
    assert "✗ z is positive [in ≥ 2 of 3 seeds] (held in 1 of 3)" in capsys.readouterr().out
    claim = json.loads((tmp_path / "b" / "result.json").read_text())["claims"][2]
    assert claim["need"] == 2 and claim["held_in"] == 1
    assert claim["per_seed"] == [False, True, False]
    assert claim["evidence"]["spread"]["z"] == {"median": -1.0, "min": -1.0, "max": 1.0, "n": 3}


def test_threads_reach_the_measurement(fake, tmp_path):
    assert main(["experiment", "fake", "--quick", "--threads", "2", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["threads"] == 2 and result["per_seed"][0]["numbers"]["threads"] == 2
    assert result["per_seed"][0]["threads"] == 2


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--seeds", "0"], "--seeds must be a positive integer"),
        (["--threads", "0"], "--threads must be a positive integer"),
        (["--seed", str(2**32 - 2), "--seeds", "3"], "--seed must be between"),
    ],
)
def test_bad_seeds_and_threads(fake, tmp_path, capsys, args, needle):
    assert main(["experiment", "fake", "--quick", *args, "--out", str(tmp_path)]) == 2
    assert needle in capsys.readouterr().err
    assert not (tmp_path / "result.json").exists()


def test_executor_passed_through(fake, tmp_path):
    assert main(["experiment", "fake", "--quick", "--executor", "ray", "--out", str(tmp_path)]) == 0
    numbers = json.loads((tmp_path / "result.json").read_text())["per_seed"][0]["numbers"]
    assert numbers["executor"] == "ray"


def test_bad_seed(capsys):
    assert main(["experiment", "he2015", "--seed", "-1"]) == 2


def test_all_runs_every_registered(fake, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(experiments, "EXPERIMENTS", {"fake": fake})
    assert main(["experiment", "all", "--quick", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "fake" / "result.json").is_file()
    assert "fake (quick" in capsys.readouterr().out
