"""gw.diagnose accepts a Run, a run directory (str or Path) or a Checkup; store_findings."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

import gradwatch as gw
from tests.check.nets import mlp, standard


@pytest.fixture(scope="module")
def vanishing_run(tmp_path_factory):
    torch.manual_seed(0)
    model = mlp(8, 16, nn.Sigmoid, standard)
    run_dir = tmp_path_factory.mktemp("runs") / "a"
    with gw.watch(model, run_dir=run_dir, detail_every=1) as mon:  # backprop_norm each step
        for _ in range(3):
            model.zero_grad()
            loss = model(torch.randn(8, 16)).pow(2).mean()
            loss.backward()
            mon.step(loss)
    return run_dir


def summary(findings):
    return [(f.kind, f.layers, f.steps, f.severity) for f in findings]


def test_diagnose_accepts_run_str_and_path(vanishing_run):
    from_run = gw.diagnose(gw.load(vanishing_run))
    assert summary(from_run) == summary(gw.diagnose(str(vanishing_run)))
    assert summary(from_run) == summary(gw.diagnose(Path(vanishing_run)))
    f = [f for f in from_run if f.kind == "vanishing"][0]
    assert f.steps == (0, 2) and f.layers[0] == "0"


def test_diagnose_accepts_a_checkup_and_its_run():
    torch.manual_seed(0)
    cu = gw.check(mlp(8, 16, nn.Sigmoid, standard), torch.randn(8, 16))
    assert summary(gw.diagnose(cu)) == summary(cu.findings)
    assert summary(gw.diagnose(cu.run)) == summary(cu.findings)  # a checkup's run stays one
    assert cu.findings and all(f.steps is None for f in cu.findings)


@pytest.mark.parametrize("bad", [3, None, [1, 2], {"a": 1}])
def test_diagnose_rejects_other_types(bad):
    with pytest.raises(gw.GradwatchTypeError, match=r"^run must be a gradwatch Run"):
        gw.diagnose(bad)


def test_diagnose_missing_directory(tmp_path):
    with pytest.raises(gw.RunDirectoryError, match="does not exist"):
        gw.diagnose(tmp_path / "nope")


def test_store_findings_round_trip(vanishing_run):
    findings = gw.diagnose(vanishing_run)
    path = gw.store_findings(vanishing_run, findings)
    assert path == Path(vanishing_run) / "findings.jsonl"
    lines = path.read_text().splitlines()
    assert len(lines) == len(findings) > 0
    assert [json.loads(line)["kind"] for line in lines] == [f.kind for f in findings]
    assert gw.load(vanishing_run).findings == findings
    assert not list(Path(vanishing_run).glob(".*.tmp"))  # written through a temp file
    gw.store_findings(str(vanishing_run), findings[:1])  # replaces, does not append
    assert len(gw.load(vanishing_run).findings) == 1


def test_store_findings_errors(tmp_path):
    with pytest.raises(gw.RunDirectoryError):
        gw.store_findings(tmp_path / "missing", [])
    with pytest.raises(gw.GradwatchTypeError, match="Finding"):
        gw.store_findings(tmp_path, ["not a finding"])
    with pytest.raises(gw.GradwatchTypeError, match="^run_dir"):
        gw.store_findings(3, [])
    assert not (tmp_path / "findings.jsonl").exists()
