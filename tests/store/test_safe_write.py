"""Writes never follow a symlink planted in the run directory.

``write_atomic`` replaces a link with the new file and leaves the link's target as it was;
``gradwatch report`` (HTML, figures, TensorBoard) and ``store_findings`` write through it or
refuse a linked output folder.
"""

from __future__ import annotations

import os

import pytest
import torch
from torch import nn

import gradwatch as gw
from gradwatch.cli import main
from gradwatch.errors import GradwatchTypeError, GradwatchValueError
from gradwatch.store.safe_write import write_atomic

SECRET = b"precious data that must survive\n"


@pytest.fixture
def victim(tmp_path):
    target = tmp_path / "elsewhere" / "precious.txt"
    target.parent.mkdir()
    target.write_bytes(SECRET)
    return target


def test_write_atomic_replaces_a_symlink_not_its_target(tmp_path, victim):
    link = tmp_path / "out.html"
    link.symlink_to(victim)
    assert write_atomic(link, "<html>new</html>") == link
    assert not link.is_symlink()
    assert link.read_text() == "<html>new</html>"
    assert victim.read_bytes() == SECRET
    assert sorted(p.name for p in tmp_path.iterdir()) == ["elsewhere", "out.html"]  # no tmp


def test_write_atomic_writes_bytes_and_replaces_an_old_file(tmp_path):
    path = tmp_path / "a.bin"
    path.write_bytes(b"old")
    write_atomic(path, b"\x00\x01new")
    assert path.read_bytes() == b"\x00\x01new"


def test_write_atomic_refuses_bad_data_and_folders_and_leaves_no_temp_file(tmp_path):
    with pytest.raises(GradwatchTypeError, match="data"):
        write_atomic(tmp_path / "x", 3)
    with pytest.raises(GradwatchValueError, match="folder"):
        write_atomic(tmp_path, "x")
    with pytest.raises(OSError):
        write_atomic(tmp_path / "missing" / "x", "x")
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def run_dir(tmp_path):
    run_dir = tmp_path / "run"
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with gw.watch(model, run_dir=run_dir, optimizer=opt):
        for _ in range(3):
            opt.zero_grad()
            model(torch.randn(5, 4)).pow(2).mean().backward()
            opt.step()
    return run_dir


def test_report_over_a_planted_report_html_symlink_keeps_the_target(run_dir, victim, capsys):
    (run_dir / "report.html").symlink_to(victim)
    assert main(["report", str(run_dir)]) == 0
    assert victim.read_bytes() == SECRET
    assert not (run_dir / "report.html").is_symlink()
    assert "<html" in (run_dir / "report.html").read_text()


def test_store_findings_over_a_planted_symlink_keeps_the_target(run_dir, victim):
    (run_dir / "findings.jsonl").unlink()
    (run_dir / "findings.jsonl").symlink_to(victim)
    gw.store_findings(run_dir, gw.diagnose(run_dir))
    assert victim.read_bytes() == SECRET
    assert not (run_dir / "findings.jsonl").is_symlink()


def test_figures_replace_planted_file_links_and_refuse_a_linked_folder(run_dir, victim, capsys):
    figs = run_dir / "figs"
    figs.mkdir()
    (figs / "loss.png").symlink_to(victim)
    assert main(["report", str(run_dir), "--figures", str(figs)]) == 0
    assert victim.read_bytes() == SECRET
    assert (figs / "loss.png").read_bytes()[:4] == b"\x89PNG"
    linked = run_dir / "linked"
    linked.symlink_to(victim.parent, target_is_directory=True)
    before = sorted(os.listdir(victim.parent))
    for option in ("--figures", "--tensorboard"):
        capsys.readouterr()
        assert main(["report", str(run_dir), option, str(linked)]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "symbolic link" in err, err
    assert sorted(os.listdir(victim.parent)) == before
