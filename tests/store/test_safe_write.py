"""Writes never follow a symlink planted in the run directory.

``write_atomic`` replaces a link with the new file and leaves the link's target as it was;
``gradwatch report`` (HTML, figures, TensorBoard) and ``store_findings`` write through it or
refuse a linked output folder. ``write_with`` is the one implementation under both flavours:
the run directory's files (fixed ``.NAME.tmp`` name, no fsync) and ``write_atomic`` (random
temporary name, fsync before the rename).
"""

from __future__ import annotations

import os

import pytest
import torch
from torch import nn

import gradwatch as gw
from gradwatch.cli import main
from gradwatch.errors import GradwatchTypeError, GradwatchValueError
from gradwatch.store import safe_write
from gradwatch.store.safe_write import (
    write_atomic,
    write_bytes_atomic,
    write_json_atomic,
    write_with,
)

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
def fsyncs(monkeypatch):
    """The file descriptors ``os.fsync`` was called on, as the store calls it."""
    seen = []
    real = os.fsync

    def spy(fd):
        seen.append(fd)
        real(fd)

    monkeypatch.setattr(safe_write.os, "fsync", spy)
    return seen


def test_write_atomic_fsyncs_through_a_random_temporary_name(tmp_path, fsyncs):
    names = []
    write_with(tmp_path / "a.txt", lambda fh: names.extend(os.listdir(tmp_path)), fsync=True,
               unique=True)
    (name,) = names
    assert name.startswith(".a.txt.") and name.endswith(".tmp") and name != ".a.txt.tmp"
    assert len(fsyncs) == 1
    write_atomic(tmp_path / "b.txt", "b")
    assert len(fsyncs) == 2 and (tmp_path / "b.txt").read_text() == "b"
    assert sorted(os.listdir(tmp_path)) == ["a.txt", "b.txt"]


def test_run_directory_writes_use_the_fixed_name_without_fsync(tmp_path, victim, fsyncs):
    run = tmp_path / "run"
    run.mkdir()
    names = []
    write_with(run / "meta.json", lambda fh: names.extend(os.listdir(run)))
    assert names == [".meta.json.tmp"]
    # a leftover temporary file, or a link planted under its name, is replaced, not followed
    (run / ".meta.json.tmp").symlink_to(victim)
    write_json_atomic(run / "meta.json", {"x": -float("inf")})
    write_bytes_atomic(run / "findings.jsonl", b"")
    assert victim.read_bytes() == SECRET and fsyncs == []
    assert (run / "meta.json").read_text() == '{\n  "x": "-inf"\n}\n'
    assert sorted(os.listdir(run)) == ["findings.jsonl", "meta.json"]


@pytest.mark.parametrize("unique", [False, True])
def test_a_failed_write_leaves_the_old_file_and_no_temporary_file(tmp_path, unique):
    path = tmp_path / "a.txt"
    path.write_text("old")

    def fail(fh):
        fh.write(b"half")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="space"):
        write_with(path, fail, fsync=unique, unique=unique)
    assert path.read_text() == "old" and os.listdir(tmp_path) == ["a.txt"]


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
