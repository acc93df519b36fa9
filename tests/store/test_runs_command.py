import json
import subprocess
import sys

import torch
from torch import nn

import gradwatch as gw


def test_runs_lists_run_directories(tmp_path):
    for name in ("a", "nested/b"):
        model = nn.Sequential(nn.Linear(3, 3), nn.ReLU(), nn.Linear(3, 1))
        with gw.watch(model, tmp_path / name) as mon:
            for _ in range(3):
                model(torch.randn(2, 3)).sum().backward()
                mon.step()
    (tmp_path / "not-a-run").mkdir()
    out = subprocess.run([sys.executable, "-m", "gradwatch.cli", "runs", str(tmp_path), "--json"],
                         capture_output=True, text=True, check=True)
    rows = json.loads(out.stdout)
    assert sorted(r["run"] for r in rows) == [str(tmp_path / "a"), str(tmp_path / "nested/b")]
    assert all(r["status"] == "closed" and r["steps"] == 3 and r["layers"] == 2 for r in rows)
    assert all(r["verdict"] == "healthy" for r in rows)  # diagnosed at close, nothing found
    table = subprocess.run([sys.executable, "-m", "gradwatch.cli", "runs", str(tmp_path)],
                           capture_output=True, text=True, check=True)
    assert "nested" in table.stdout and "closed" in table.stdout


def test_runs_on_a_missing_directory_exits_2(tmp_path):
    out = subprocess.run([sys.executable, "-m", "gradwatch.cli", "runs", str(tmp_path / "x")],
                         capture_output=True, text=True)
    assert out.returncode == 2
    assert "Traceback" not in out.stderr and "is not a directory" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
