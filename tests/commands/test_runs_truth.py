"""``gradwatch runs`` tells the truth and never crashes: a killed writer shows as crashed with
the steps on disk, and a run it cannot read is one row that says why."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import torch
from torch import nn

import gradwatch as gw

CHILD = """
import sys, time, torch
from torch import nn
import gradwatch as gw
model = nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 1))
mon = gw.watch(model, sys.argv[1], flush_every=1)
for step in range(5):
    model.zero_grad()
    model(torch.randn(3, 4)).sum().backward()
    mon.step()
mon.flush()
print("ready", flush=True)
time.sleep(600)
"""


def runs_json(root):
    out = subprocess.run([sys.executable, "-m", "gradwatch.cli", "runs", str(root), "--json"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return {os.path.basename(r["run"]): r for r in json.loads(out.stdout)}


def table(root):
    out = subprocess.run([sys.executable, "-m", "gradwatch.cli", "runs", str(root)],
                         capture_output=True, text=True, timeout=300,
                         env={**os.environ, "COLUMNS": "200"})
    assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr
    return out.stdout


def test_a_killed_writer_is_crashed_with_the_steps_on_disk(tmp_path):
    run_dir = tmp_path / "killed"
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(run_dir)],
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "ready"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # until the background writer flushed the steps
            if len(gw.load(run_dir).steps) == 5:
                break
            time.sleep(0.2)
        alive = runs_json(tmp_path)["killed"]
        assert alive["status"] == "running"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    row = runs_json(tmp_path)["killed"]
    assert row["status"] == "crashed"
    assert row["steps"] == 5
    assert "crashed" in table(tmp_path)


def test_unreadable_runs_are_one_row_each_and_the_rest_is_listed(tmp_path):
    model = nn.Sequential(nn.Linear(3, 3), nn.ReLU(), nn.Linear(3, 1))
    with gw.watch(model, tmp_path / "good") as mon:
        for _ in range(3):
            model(torch.randn(2, 3)).sum().backward()
            mon.step()
    (tmp_path / "listmeta").mkdir()
    (tmp_path / "listmeta" / "meta.json").write_text("[1, 2, 3]")
    (tmp_path / "garbage").mkdir()
    (tmp_path / "garbage" / "meta.json").write_bytes(b"\xff\xfe{not json")
    odd = tmp_path / "run[" / "]x"  # a folder named "run[/]x": rich markup characters
    odd.mkdir(parents=True)
    good_meta = json.loads((tmp_path / "good" / "meta.json").read_text())
    (odd / "meta.json").write_text(json.dumps(good_meta))
    badf = tmp_path / "badfindings"
    badf.mkdir()
    (badf / "meta.json").write_text(json.dumps(good_meta))
    (badf / "findings.jsonl").write_text('{"kind": "vanishing", "severity": "error"}\nnot json\n')

    rows = runs_json(tmp_path)
    assert rows["good"]["status"] == "closed" and rows["good"]["verdict"] == "healthy"
    assert rows["listmeta"]["status"] == "unreadable meta.json (a JSON list, not an object)"
    assert rows["garbage"]["status"].startswith("unreadable meta.json")
    assert rows["]x"]["run"] == str(odd)
    assert rows["badfindings"]["verdict"] == "vanishing (1 unreadable findings line)"
    text = table(tmp_path)
    assert "run[/]x" in text and "unreadable meta.json" in text and "good" in text
