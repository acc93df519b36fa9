"""Readers never crash on foreign or malformed files in a run directory.

Each test plants a real malformed file (bytes on disk, real Parquet written with pyarrow) in
a real recorded run and checks what ``gw.load``, ``Run.findings``, ``gw.diagnose`` and the CLI
make of it: a bad line or part is skipped with a warning and the rest is loaded; a bad
``meta.json`` is a RunDirectoryError naming the file and what is wrong.
"""

from __future__ import annotations

import json
import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from torch import nn

import gradwatch as gw
from gradwatch.cli import main
from gradwatch.errors import RunDirectoryError
from gradwatch.findings import Finding


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """A real 4-step run with its findings stored (the template each test copies)."""
    run_dir = tmp_path_factory.mktemp("template") / "run"
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with gw.watch(model, run_dir=run_dir, optimizer=opt):
        for _ in range(4):
            opt.zero_grad()
            model(torch.randn(5, 4)).pow(2).mean().backward()
            opt.step()
    gw.store_findings(run_dir, [Finding(kind="vanishing", layers=("0",), steps=(0, 3),
                                        severity="warning", message="test finding")])
    return run_dir


@pytest.fixture
def run_dir(recorded, tmp_path):
    dest = tmp_path / "run"
    shutil.copytree(recorded, dest)
    return dest


def _finding_line():
    return json.dumps(Finding(kind="exploding", layers=("2",), steps=(1, 2),
                              severity="error", message="kept").to_dict())


BAD_LINES = {
    "list": b"[1, 2, 3]",                                  # JSON, not an object
    "string": b'"just a string"',
    "number": b"42",
    "no-kind": b'{"no_kind": 1}',
    "kind-not-str": b'{"kind": 5}',
    "layers-not-list": b'{"kind": "dead", "layers": 3}',
    "evidence-not-object": b'{"kind": "dead", "evidence": [1]}',
    "steps-not-int": b'{"kind": "dead", "steps": ["a", "b"]}',
    "not-utf8": b"\xff\xfe\x00garbage",
    "not-json": b"{truncated",
    "too-deep": b"[" * 100_000 + b"]" * 100_000,          # deeper than the parser goes
}


@pytest.mark.parametrize("bad_line", list(BAD_LINES.values()), ids=list(BAD_LINES))
def test_a_bad_findings_line_is_skipped_with_a_warning(run_dir, bad_line):
    (run_dir / "findings.jsonl").write_bytes(
        bad_line + b"\n" + _finding_line().encode() + b"\n")
    with pytest.warns(RuntimeWarning, match="findings.jsonl: skipped 1 line"):
        run = gw.load(run_dir)
    assert [f.message for f in run.findings] == ["kept"]
    assert len(run.steps) == 4


def test_a_findings_file_of_binary_noise_loads_with_no_findings(run_dir, capsys):
    (run_dir / "findings.jsonl").write_bytes(bytes(range(256)) * 4)
    with pytest.warns(RuntimeWarning, match="skipped"):
        run = gw.load(run_dir)
    assert run.findings == []
    assert run.steps == [0, 1, 2, 3]
    with pytest.warns(RuntimeWarning):
        assert main(["report", str(run_dir), "-o", str(run_dir.parent / "r.html")]) == 0
    assert (run_dir.parent / "r.html").stat().st_size > 1000
    assert main(["runs", str(run_dir.parent)]) == 0
    assert "Traceback" not in capsys.readouterr().err


def _part(run_dir, name, table):
    pq.write_table(table, run_dir / "stats" / name)


@pytest.mark.parametrize("table,why", [
    (pa.table({"a": [1, 2], "b": ["x", "y"]}), "missing"),
    (pa.table({"step": ["1"], "layer": ["0"], "stat": ["grad_norm"], "value": [1.0]}), "step"),
    (pa.table({"step": [1], "layer": [0], "stat": ["grad_norm"], "value": [1.0]}), "layer"),
    (pa.table({"step": [1], "layer": ["0"], "stat": ["grad_norm"], "value": ["big"]}), "value"),
    (pa.table({"step": pa.array([None], pa.int64()), "layer": ["0"], "stat": ["grad_norm"],
               "value": [1.0]}), "missing values"),
])
def test_a_part_with_a_foreign_schema_is_skipped_with_a_warning(run_dir, table, why):
    _part(run_dir, "part-999990.parquet", table)
    with pytest.warns(RuntimeWarning, match=f"part-999990.parquet.*{why}"):
        run = gw.load(run_dir)
    assert run.steps == [0, 1, 2, 3]
    assert list(run.stats.columns) == ["step", "layer", "stat", "value"]
    assert gw.diagnose(run) is not None


def test_a_part_with_compatible_types_and_extra_columns_is_read(run_dir):
    table = pa.table({"step": pa.array([7], pa.int32()), "layer": ["0"], "stat": ["grad_norm"],
                      "value": pa.array([2.5], pa.float64()), "extra": ["ignored"]})
    _part(run_dir, "part-999991.parquet", table)
    run = gw.load(run_dir)
    assert run.steps == [0, 1, 2, 3, 7]
    assert run.pivot("grad_norm").loc[7, "0"] == 2.5


def test_truncated_parts_stray_files_and_folders_in_stats_are_skipped(run_dir):
    stats = run_dir / "stats"
    good = sorted(stats.glob("part-*.parquet"))[0]
    (stats / "part-999992.parquet").write_bytes(good.read_bytes()[:40])  # truncated
    (stats / "part-999993.parquet").mkdir()  # a folder named like a part
    (stats / "notes.txt").write_text("stray")
    (stats / "part-x.parquet").write_bytes(b"not parquet")  # not a part name: not read
    with pytest.warns(RuntimeWarning) as caught:
        run = gw.load(run_dir)
    messages = " ".join(str(w.message) for w in caught)
    assert "part-999992.parquet" in messages and "part-999993.parquet" in messages
    assert "notes.txt" not in messages and "part-x.parquet" not in messages
    assert run.steps == [0, 1, 2, 3]


@pytest.mark.parametrize("meta,words", [
    ([1, 2, 3], ["meta.json", "list", "format_version"]),
    ("a string", ["meta.json", "str"]),
    ({"layers": ["0"]}, ["meta.json", "format_version"]),
    ({"format_version": True}, ["meta.json", "format_version", "True"]),
    ({"format_version": "1"}, ["meta.json", "format_version"]),
    ({"format_version": 0}, ["meta.json", "format_version"]),
    ({"format_version": 1, "layers": "0,2"}, ["meta.json", "'layers'", "list"]),
    ({"format_version": 1, "layers": [0, 2]}, ["meta.json", "layers", "0"]),
    ({"format_version": 1, "status": 3}, ["meta.json", "'status'", "str"]),
    ({"format_version": 1, "model": "Sequential"}, ["meta.json", "'model'", "dict"]),
    ({"format_version": 1, "steps_recorded": True}, ["meta.json", "'steps_recorded'"]),
    ({"format_version": 1, "settings": []}, ["meta.json", "'settings'"]),
])
def test_a_meta_json_of_the_wrong_shape_is_a_run_directory_error(run_dir, meta, words, capsys):
    (run_dir / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(RunDirectoryError) as info:
        gw.load(run_dir)
    for word in words:
        assert word in str(info.value), str(info.value)
    assert main(["report", str(run_dir)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "meta.json" in err
    assert main(["runs", str(run_dir.parent), "--json"]) == 0  # listed, not a crash
    (row,) = json.loads(capsys.readouterr().out)
    assert row["run"] == str(run_dir)


def test_a_meta_json_that_is_not_utf8_or_not_json_is_a_run_directory_error(run_dir):
    for content in (b"\xff\xfe{\x00", b'{"format_version": 1,', b"[" * 100_000):
        (run_dir / "meta.json").write_bytes(content)
        with pytest.raises(RunDirectoryError, match="meta.json is corrupt"):
            gw.load(run_dir)
