"""Names with terminal escape codes in them reach the terminal as visible text, not as codes.

An ``nn.ModuleDict`` key (or a hand-edited meta.json) may hold escape sequences that clear
the screen, recolour or hide the text after them, or ring the bell. Every command that prints
a layer name, a message or a run name writes them as ``\\x1b``-style text.
"""

from __future__ import annotations

import re

import pytest
import torch

import gradwatch as gw
from gradwatch.cli import main
from gradwatch.report import print_summary

EVIL = "\x1b[2J\x1b[31mevil\x07\r"
CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")  # all but tab and newline

FACTORY = f'''
import torch.nn as nn
class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleDict({{{EVIL!r}: nn.Linear(4, 4), "out": nn.Linear(4, 2)}})
    def forward(self, x):
        return self.blocks["out"](self.blocks[{EVIL!r}](x).relu())
def make():
    return Net()
'''


@pytest.fixture
def evil_run(tmp_path):
    ns: dict = {}
    exec(FACTORY, ns)  # noqa: S102 - the test's own model
    model = ns["make"]()
    with gw.watch(model, tmp_path / "run", name=f"run {EVIL}", detail_every=1) as mon:
        for _ in range(3):
            model(torch.randn(5, 4)).pow(2).mean().backward()
            mon.step(1.0)
    (tmp_path / "factory.py").write_text(FACTORY)
    return tmp_path


def shown(out: str) -> str:
    """The letters and digits of ``out``: what survives a table folding a name over lines."""
    return re.sub(r"[^A-Za-z0-9]", "", out)


@pytest.mark.parametrize("argv", [
    ["report", "{d}/run", "-o", "{d}/r.html"],
    ["check", "{d}/factory.py:make", "--input-shape", "3,4"],
    ["fix", "{d}/factory.py:make", "--input-shape", "3,4"],
    ["runs", "{d}"],
])
def test_commands_print_no_control_characters(evil_run, argv, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "300")  # tables wide enough to keep a name on one line
    code = main([a.format(d=evil_run) for a in argv])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert not CONTROL.findall(out), CONTROL.findall(out)
    if argv[0] != "runs":  # the layer name is there, its codes written out
        assert "x1b2Jx1b31mevilx07r" in shown(out)


def test_print_summary_and_errors_write_names_as_text(evil_run, capsys):
    print_summary(evil_run / "run")
    out = capsys.readouterr().out
    assert not CONTROL.findall(out)
    assert "x1b2Jx1b31mevilx07r" in shown(out)
    assert "runx1b" in shown(out)  # the run's name, in the title
    # a one-line error quoting a name with codes in it
    (evil_run / EVIL).mkdir()
    assert main(["report", str(evil_run / EVIL)]) == 2
    err = capsys.readouterr().err
    assert not CONTROL.findall(err) and "x1b2J" in shown(err)
