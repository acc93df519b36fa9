"""``gradwatch report`` as a user runs it: a subprocess, exit codes, one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from gradwatch.cli import main
from gradwatch.report.figures import RUN_FIGURES, figures_for


def gradwatch(*args):
    """Start ``python -m gradwatch.cli report ARGS`` (each process imports torch: start them
    together and collect them with :func:`finish`)."""
    return subprocess.Popen([sys.executable, "-m", "gradwatch.cli", "report", *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc, timeout=300):
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def test_report_command_end_to_end(mixed_run, bare_run, tmp_path):
    out = tmp_path / "out.html"
    full = gradwatch(mixed_run.path, "-o", out, "--tensorboard", tmp_path / "tb")
    default = gradwatch(bare_run.path, "--figures", tmp_path / "figs")
    missing = gradwatch(tmp_path / "nope")

    code, stdout, stderr = finish(full)
    assert code == 0, stderr
    assert out.is_file() and out.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    assert str(out) in stdout.replace("\n", "")
    assert "verdict:" in stdout and "gradient flow" in stdout
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))

    code, stdout, stderr = finish(default)
    assert code == 0, stderr
    assert (bare_run.path / "report.html").is_file()  # default: RUN_DIR/report.html
    names = figures_for(bare_run.path)
    assert set(RUN_FIGURES) - set(names) == {"attention", "logits", "adam", "spike_timeline"}
    for name in names:
        assert (tmp_path / "figs" / f"{name}.png").read_bytes().startswith(b"\x89PNG")
        assert b"<svg" in (tmp_path / "figs" / f"{name}.svg").read_bytes()[:1000]

    code, stdout, stderr = finish(missing)
    assert code == 2
    assert stderr.strip().splitlines() == [
        f"gradwatch report: error: run_dir {str(tmp_path / 'nope')!r} does not exist"
    ]
    assert "Traceback" not in stdout + stderr


@pytest.mark.parametrize("kind", ["empty", "foreign", "file"])
def test_not_a_run_directory_is_one_line_and_exit_2(kind, tmp_path, capsys):
    path = tmp_path / kind
    if kind == "file":
        path.write_text("hello")
    else:
        path.mkdir()
    if kind == "foreign":
        (path / "meta.json").write_text(json.dumps({"name": "not a gradwatch run", "x": 1}))
    assert main(["report", str(path)]) == 2
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gradwatch report: error: run_dir ")
    assert str(path) in lines[0] and "Traceback" not in out + err
    assert not (path / "report.html").exists() if path.is_dir() else True
