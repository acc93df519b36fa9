"""The quick mode of each experiment: the paper's claims hold, outputs are where they say."""

import json
import math
from pathlib import Path

import pytest

import gradwatch as gw
from gradwatch.experiments import base

from .conftest import OURS, numbers_of, runs_of

# claims that need the full-size run (scale "full"); they are computed in quick mode, not required
FULL_ONLY = {
    "glorot2010": ["Normalized init ends with lower test error"],
    "he2015": ["the Xavier net trains too", "Over the full run"],
    "residual": [],
    "micikevicius2018": [],
}


@pytest.mark.parametrize("name", OURS)
def test_quick_claims_hold(quick_result, name):
    result = quick_result(name)
    assert result["quick"] is True and result["seeds"] == [0] and result["name"] == name
    assert result["threads"] == 1
    for c in result["claims"]:
        full_only = any(s in c["claim"] for s in FULL_ONLY[name])
        assert (c.get("scale") == "full") == full_only, c["claim"]
        if not full_only:
            assert c["holds"], f"{name}: {c['claim']} -- evidence {c['evidence']}"
    assert base.outcome(result)


@pytest.mark.parametrize("name", OURS)
def test_outputs_written(quick_result, name):
    result = quick_result(name)
    out = Path(result["out_dir"])
    on_disk = json.loads((out / "result.json").read_text())
    assert on_disk["per_seed"] == result["per_seed"]
    assert set(on_disk) >= {
        "name",
        "config",
        "quick",
        "seeds",
        "threads",
        "per_seed",
        "claims",
        "runtime_s",
        "cpu_s",
        "versions",
    }
    assert on_disk["runtime_s"] > 0 and on_disk["cpu_s"] > 0 and on_disk["versions"]["torch"]
    seed = json.loads((runs_of(result) / "result.json").read_text())  # the seed's own record
    assert seed["seed"] == 0 and seed["threads"] == 1 and seed["numbers"] == numbers_of(result)
    pngs = sorted((out / "figures").glob("*.png"))
    assert pngs and all(p.with_suffix(".svg").is_file() for p in pngs)
    assert all(p.stat().st_size < 200_000 for p in pngs)
    runs = sorted(p for p in (runs_of(result) / "runs").iterdir() if p.is_dir())
    assert runs
    for r in runs:
        run = gw.load(r)
        assert run.meta["status"] == "closed" and len(run.stats) > 0


def test_glorot_numbers_are_physical(quick_result):
    runs = numbers_of(quick_result("glorot2010"))["runs"]
    for key, r in runs.items():
        # standard init shrinks by ~√(1/3) per layer at least; normalized much less
        if key.endswith("-standard"):
            assert r["backprop_ratio"] < 0.5
        if r["predicted_backprop_ratio"] is not None:  # mean-field theory agrees within 2×
            assert abs(math.log(r["backprop_ratio"] / r["predicted_backprop_ratio"])) < math.log(2)
        assert 0 <= r["test_error"] <= 1


def test_he_theory_beside_measurement(quick_result):
    runs = numbers_of(quick_result("he2015"))["runs"]
    x30, h30 = runs["30-xavier"], runs["30-he"]
    if x30["chi1_hidden"] is not None:
        assert x30["chi1_hidden"] == pytest.approx(0.5, abs=0.05)  # σw² ≈ 1 -> χ1 = 1/2
        assert h30["chi1_hidden"] == pytest.approx(1.0, abs=0.05)  # σw² ≈ 2 -> χ1 = 1
    assert x30["backprop_ratio"] < 1e-3 < h30["backprop_ratio"]


@pytest.mark.slow
def test_xiong2020_quick_claims_hold_and_outputs(quick_result):
    # slow (about 30 s of CPU): its claims are checked on the stored full record by default
    result = quick_result("xiong2020")
    assert all(c["holds"] for c in result["claims"]), result["claims"]
    out = Path(result["out_dir"])
    assert {p.stem for p in (out / "figures").glob("*.png")} == {"grad_at_init", "loss"}
    for arm in ("post-LN", "pre-LN", "post-LN_warmup"):
        assert gw.load(runs_of(result) / "runs" / arm).meta["status"] == "closed"
