"""What a user's habits expect of the command line: `runs` finds an experiment's runs, `check
--fail-on` fails CI, `--seed` gives the same check twice, `fix` without `--save` does not talk
of saved weights, `... --json | head` stops quietly, and JSON ends with a newline.

Most go through ``gradwatch.cli.main`` in-process (what the console script calls); the broken
pipe needs a real process whose reader has gone.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

import gradwatch as gw
from gradwatch.cli import main

FACTORY = textwrap.dedent(
    """
    from torch import nn


    def sigmoid_net():          # weights from torch's global generator, as most factories do
        layers = []
        for _ in range(12):
            layers += [nn.Linear(32, 32), nn.Sigmoid()]
        return nn.Sequential(*layers, nn.Linear(32, 4))


    def small():
        return nn.Sequential(nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 2))
    """
)


@pytest.fixture
def factory(tmp_path):
    path = tmp_path / "models.py"
    path.write_text(FACTORY)
    return path


def tiny_run(run_dir):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 1))
    with gw.watch(model, run_dir) as mon:
        for _ in range(3):
            model.zero_grad()
            loss = model(torch.randn(3, 4)).pow(2).mean()
            loss.backward()
            mon.step(loss=loss)


def test_runs_finds_an_experiments_runs_four_levels_down(tmp_path, capsys):
    # gradwatch experiment NAME writes experiments/<time>/<name>/runs/<run>
    deep = tmp_path / "experiments" / "20260101-120000" / "he2015" / "runs" / "xavier30"
    tiny_run(deep)
    tiny_run(tmp_path / "experiments" / "shallow")
    (tmp_path / "experiments" / ".hidden" / "a").mkdir(parents=True)
    assert main(["runs", str(tmp_path / "experiments"), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert sorted(r["run"] for r in rows) == sorted([str(deep),
                                                    str(tmp_path / "experiments" / "shallow")])
    assert all(r["status"] == "closed" and r["steps"] == 3 for r in rows)
    # a bound the user can set
    assert main(["runs", str(tmp_path / "experiments"), "--json", "--depth", "2"]) == 0
    assert [r["run"] for r in json.loads(capsys.readouterr().out)] == [
        str(tmp_path / "experiments" / "shallow")]
    assert main(["runs", str(tmp_path), "--depth", "0"]) == 2
    assert "--depth must be a positive integer" in capsys.readouterr().err


def test_runs_table_at_80_columns_keeps_path_parts_whole(tmp_path, capsys, monkeypatch):
    deep = tmp_path / "exp" / "20260101-120000" / "he2015_full_size" / "runs" / "xavier30"
    tiny_run(deep)
    monkeypatch.setenv("COLUMNS", "80")
    assert main(["runs", str(tmp_path / "exp")]) == 0
    out = capsys.readouterr().out
    assert max(len(line) for line in out.splitlines()) <= 80
    cells = [line.split("│")[1].strip() for line in out.splitlines() if line.startswith("│")]
    cells = [c for c in cells if c]
    assert len(cells) > 1 and all(c.endswith("/") for c in cells[:-1])  # broken after a "/"
    want = "20260101-120000/he2015_full_size/runs/xavier30".split("/")
    got = "".join(cells).split("/")
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):  # each part whole, or shortened from the middle
        head, _, tail = g.partition("…")
        assert g == w or (w.startswith(head) and w.endswith(tail) and tail), (g, w)


def test_check_fail_on_gives_ci_a_failing_exit_code(factory, capsys):
    spec = f"{factory}:sigmoid_net"
    assert main(["check", spec, "--input-shape", "16,32"]) == 0  # no --fail-on: 0, any verdict
    capsys.readouterr()
    assert main(["check", spec, "--input-shape", "16,32", "--fail-on",
                 "vanishing,exploding"]) == 1
    assert "verdict vanishing is one of --fail-on" in capsys.readouterr().err
    assert main(["check", spec, "--input-shape", "16,32", "--fail-on", "exploding"]) == 0
    capsys.readouterr()
    assert main(["check", spec, "--input-shape", "16,32", "--fail-on", "any", "--json"]) == 1
    out = capsys.readouterr().out
    assert json.loads(out)["verdict"] == "vanishing"
    assert main(["check", spec, "--input-shape", "16,32", "--fail-on", "vanishng"]) == 2
    assert "'vanishng' is not a verdict" in capsys.readouterr().err


def test_fail_on_names_every_verdict_but_healthy():
    from gradwatch.commands.check import FAIL_ON_CHOICES
    from gradwatch.verdicts import VERDICTS

    assert set(FAIL_ON_CHOICES) == (set(VERDICTS) - {"healthy"}) | {"any"}


def check_json(spec, *args):
    """The --json output of gradwatch check, in this process."""
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(["check", spec, "--input-shape", "4,32", "--json", *args]) == 0
    return json.loads(buf.getvalue())


def test_check_seed_seeds_the_weights_too(factory):
    spec = f"{factory}:sigmoid_net"
    torch.manual_seed(123)
    first = check_json(spec)
    torch.randn(1000)  # whatever state the global generator is in
    again = check_json(spec)
    assert first["table"] == again["table"] and first["loss"] == again["loss"]
    other = check_json(spec, "--seed", "1")
    assert other["loss"] != first["loss"]
    # the weights differ, not only the batch: the factory drew them after the seed
    assert [r["grad_norm"] for r in other["table"]] != [r["grad_norm"] for r in first["table"]]


def test_fix_without_save_does_not_speak_of_saved_weights(factory, tmp_path, capsys):
    spec = f"{factory}:sigmoid_net"
    assert main(["fix", spec, "--input-shape", "16,32", "--allow", "init",
                 "--max-rounds", "1"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "saved" not in out.lower() and "--save PATH" in out
    saved = tmp_path / "fixed.pt"
    assert main(["fix", spec, "--input-shape", "16,32", "--allow", "init",
                 "--max-rounds", "1", "--save", str(saved)]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "the saved weights load into your model as it is" in out and saved.is_file()


def run_into_closed_pipe(*args):
    """Run ``gradwatch ARGS`` with stdout a pipe whose reader has already gone."""
    read, write = os.pipe()
    os.close(read)
    try:
        return subprocess.run([sys.executable, "-m", "gradwatch.cli", *args], stdout=write,
                              stderr=subprocess.PIPE, text=True, timeout=300)
    finally:
        os.close(write)


def test_json_into_a_closed_pipe_stops_quietly(tmp_path):
    """``gradwatch runs --json | head``: no BrokenPipeError, no traceback, no "Exception
    ignored" at exit."""
    for i in range(3):
        tiny_run(tmp_path / f"run{i}")
    for args in (["runs", str(tmp_path), "--json"], ["runs", str(tmp_path)]):
        proc = run_into_closed_pipe(*args)
        assert proc.stderr == "", proc.stderr
        assert proc.returncode != 0  # the output did not reach its reader
    assert run_into_closed_pipe("runs", str(tmp_path), "--json").returncode == 141


def test_json_output_and_files_end_with_a_newline(tmp_path, factory, capsys):
    tiny_run(tmp_path / "runs" / "a")
    for argv in (["runs", str(tmp_path / "runs"), "--json"],
                 ["theory", "--activation", "tanh", "--sigma-w2", "1.5", "--json"],
                 ["check", f"{factory}:small", "--input-shape", "4,8", "--json"]):
        assert main(argv) == 0
        out = capsys.readouterr().out
        assert out.endswith("}\n") or out.endswith("]\n"), argv
        json.loads(out)
    run_dir = tmp_path / "runs" / "b"
    model = nn.Linear(2, 2)
    with gw.watch(model, run_dir) as mon:
        lock = (run_dir / ".gradwatch.lock")
        assert lock.read_text().endswith("}\n")  # the lock, while the run is open
        model(torch.randn(1, 2)).sum().backward()
        mon.step()
    gw.diagnose.__globals__["store_findings"](run_dir, [
        gw.findings.Finding("dead", ("weight",), (0, 0), "warning", "m")])
    for name in ("meta.json", "findings.jsonl"):
        assert (run_dir / name).read_text().endswith("\n"), name
