"""Every JSON writer follows gradwatch.jsonable: NaN, +inf and -inf as "nan", "inf", "-inf".

Each writer gets the three special floats (and a NumPy scalar) and must write strict JSON
(``allow_nan=False`` accepts it) holding exactly what :func:`gradwatch.jsonable.jsonable`
makes of them, -inf with its sign; ``from_jsonable`` reads them back. Tables whose NaN cells
mean "no value" write those as null (:func:`gradwatch.jsonable.json_cell`).
"""

from __future__ import annotations

import importlib
import json
import math
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import gradwatch as gw
from gradwatch.check import Checkup
from gradwatch.cli import main
from gradwatch.experiments import base
from gradwatch.findings import Finding
from gradwatch.jsonable import from_jsonable, json_cell, jsonable
from gradwatch.remedies import FixReport
from gradwatch.report import write_html
from gradwatch.store.format import FINDINGS, META
from tests.diagnose.synthetic import make_run

SPECIAL = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}
FACTORY = Path(__file__).resolve().parent / "check" / "factory_file.py"


def strict(text: str):
    """Parse ``text`` as strict JSON (no NaN/Infinity tokens)."""
    def refuse(token):
        raise AssertionError(f"non-standard JSON token {token}")

    return json.loads(text, parse_constant=refuse)


def finding(**evidence) -> Finding:
    return Finding(kind="vanishing", layers=("a",), steps=None, severity="warning",
                   message="m", evidence=evidence)


def checkup(loss: float) -> Checkup:
    table = pd.DataFrame({
        "layer": ["a", "b", "c", "d"],
        "type": ["Linear"] * 4,
        "grad_norm": [1.5, math.inf, -math.inf, math.nan],
        "backprop_norm": [1.0, 2.0, 3.0, 4.0],
    })
    return Checkup(table=table, findings=[finding(**SPECIAL, f32=np.float32(0.5))],
                   verdict="vanishing", run=None, loss=loss)


def test_json_cell_and_the_recursive_reader():
    assert [json_cell(x) for x in (math.nan, math.inf, -math.inf, 2.0)] == [None, "inf", "-inf",
                                                                         2.0]
    back = from_jsonable(strict(json.dumps(jsonable({"x": [*SPECIAL.values(), None, "a"]}))))
    assert back["x"][1:] == [math.inf, -math.inf, None, "a"] and math.isnan(back["x"][0])
    assert from_jsonable({"nan": "b"}) == {"nan": "b"}  # keys are left alone


@pytest.mark.parametrize("name", list(SPECIAL))
def test_checkup_to_dict(name):
    d = strict(json.dumps(checkup(SPECIAL[name]).to_dict(), allow_nan=False))
    assert d["loss"] == name
    # table: ±inf keep their sign, NaN (a statistic that does not apply) is null
    assert [row["grad_norm"] for row in d["table"]] == [1.5, "inf", "-inf", None]
    assert d["findings"][0]["evidence"] == {**{k: k for k in SPECIAL}, "f32": 0.5}


def test_gradwatch_check_json(monkeypatch, capsys):
    # the module, not the function gw.check that shares its name
    monkeypatch.setattr(importlib.import_module("gradwatch.check"), "check",
                        lambda *a, **k: checkup(-math.inf))
    assert main(["check", f"{FACTORY}:make", "--input-shape", "8,16", "--json"]) == 0
    out = strict(capsys.readouterr().out)
    assert out["loss"] == "-inf" and out["table"][2]["grad_norm"] == "-inf"


def fix_report() -> FixReport:
    before, after = checkup(math.nan), checkup(-math.inf)
    after = replace(after, table=after.table.iloc[:3])  # layer "d" only before
    return FixReport(
        before=before, after=after,
        applied=[("xavier_init_", {"gain": math.inf, "verdict": "healthy",
                                   "backprop_spread": "-inf"})],
        changed_architecture=False, tried=[{"score": -math.inf, "ok": np.bool_(True)}],
    )


def test_fix_report_to_dict():
    d = strict(json.dumps(fix_report().to_dict(), allow_nan=False))
    assert (d["loss_before"], d["loss_after"]) == ("nan", "-inf")
    assert d["applied"][0]["gain"] == "inf" and d["tried"] == [{"score": "-inf", "ok": True}]
    rows = {r["layer_before"]: r for r in d["layers"]}
    assert rows["b"]["grad_norm_after"] == "inf" and rows["c"]["grad_norm_before"] == "-inf"
    assert rows["d"]["layer"] is None and rows["d"]["grad_norm_after"] is None  # no such layer


def test_gradwatch_fix_json(monkeypatch, capsys, tmp_path):
    fix_module = importlib.import_module("gradwatch.remedies.fix")
    monkeypatch.setattr(fix_module, "fix", lambda model, *a, **k: (model, fix_report()))
    assert main(["fix", f"{FACTORY}:make", "--input-shape", "8,16", "--json"]) == 0
    out = strict(capsys.readouterr().out)
    assert out["loss_after"] == "-inf" and out["saved"] is None


def test_store_findings(tmp_path):
    (tmp_path / META).write_text("{}")
    gw.store_findings(tmp_path, [finding(**SPECIAL, f32=np.float32(2.0))])
    (line,) = (tmp_path / FINDINGS).read_text().splitlines()
    assert strict(line)["evidence"] == {**{k: k for k in SPECIAL}, "f32": 2.0}
    assert from_jsonable(strict(line)["evidence"])["-inf"] == -math.inf


def test_html_chart_data_and_evidence(tmp_path):
    bp = np.array([[1.0, 2.0, 3.0, 4.0], [0.5, math.inf, -math.inf, math.nan]])
    run = make_run(4, {"backprop_norm": bp}, loss=[1.0, 1.0],
                   extra=[(1, "l3", "backprop_norm", math.nan)])  # l3 at step 1: recorded NaN
    path = tmp_path / "r.html"
    shown = replace(checkup(1.0), findings=[finding(per_layer={"a": -math.inf, "b": math.nan})])
    write_html(run, path, checkup=shown)
    text = path.read_text(encoding="utf-8")
    # evidence shown as the JSON files write it (not as Python's -Infinity / NaN tokens), in
    # a table of its own
    for name, shown_as in (("a", "-inf"), ("b", "nan")):
        assert re.search(rf">{name}</(?:th|code)>(?:</td>)?<td[^>]*>{shown_as}</td>", text)
    evidence = text[text.index('<details class="evidence">'):text.index("<h2>Figures")]
    assert "Infinity" not in evidence and "NaN" not in evidence
    m = re.search(r'<script id="gw-flow-data" type="application/json">(.*?)</script>', text,
                  flags=re.S)
    values = strict(m.group(1))["stats"]["backprop_norm"]["values"]
    assert values == [[1.0, 2.0, 3.0, 4.0], [0.5, "inf", "-inf", "nan"]]


def test_experiment_result_json(tmp_path):
    numbers = {**SPECIAL, "row": [1.0, -math.inf], "missing": None, "f32": np.float32(0.25)}
    claims = [base.claim("x", True, **SPECIAL)]
    result = base.finish(tmp_path, "t", {"k": -math.inf}, quick=True, seed=0, numbers=numbers,
                         claims=claims, started=0.0)
    on_disk = strict((tmp_path / base.RESULT).read_text())
    want = {**{k: k for k in SPECIAL}, "row": [1.0, "-inf"], "missing": None, "f32": 0.25}
    assert on_disk["numbers"] == result["numbers"] == want
    assert on_disk["config"] == {"k": "-inf"}
    assert on_disk["claims"][0]["evidence"] == {k: k for k in SPECIAL}
    assert from_jsonable(on_disk["numbers"])["row"] == [1.0, -math.inf]


def test_gradwatch_demo_json(monkeypatch, capsys, tmp_path):
    demo = importlib.import_module("gradwatch.demo")
    monkeypatch.setattr(demo, "run_demo", lambda out, cfg: {"before": {"loss": -math.inf},
                                                            "out": Path(out)})
    assert main(["demo", "--out", str(tmp_path / "d"), "--json"]) == 0
    assert strict(capsys.readouterr().out)["before"] == {"loss": "-inf"}


def test_gradwatch_runs_json(capsys, tmp_path):
    run = tmp_path / "r"
    run.mkdir()
    (run / META).write_text('{"format_version": 1, "status": "closed", "updated": -Infinity}')
    assert main(["runs", str(tmp_path), "--json"]) == 0
    (row,) = strict(capsys.readouterr().out)
    assert row["updated"] == "-inf"
