"""The framework: claims, result.json, outcome, grids, registry."""

import json
import math

import pytest
import torch

from gradwatch.errors import GradwatchValueError
from gradwatch.experiments import EXPERIMENTS, base, get


def _square(v):
    return v * v


def test_claim_and_jsonable():
    c = base.claim("x", torch.tensor(True).numpy(), a=float("nan"), b=torch.tensor([1.0, 2.0]))
    assert c == {
        "claim": "x",
        "holds": True,
        "evidence": {"a": None, "b": [1.0, 2.0]},
        "scale": "any",
    }
    assert base.claim("nan holds?", float("nan") < 1)["holds"] is False
    with pytest.raises(GradwatchValueError):
        base.claim("x", True, scale="medium")


def test_finish_writes_result(tmp_path):
    claims = [base.claim("a", True), base.claim("b", False, scale="full")]
    result = base.finish(
        tmp_path,
        "t",
        {"k": 1},
        quick=True,
        seed=5,
        numbers={"v": math.inf, "w": 2},
        claims=claims,
        started=0.0,
    )
    on_disk = json.loads((tmp_path / "result.json").read_text())
    assert on_disk["numbers"] == {"v": None, "w": 2} and on_disk["seed"] == 5
    assert base.outcome(result)  # the failing claim is full-scale, and this was quick
    assert not base.outcome({**result, "quick": False})


def test_run_grid_local_and_ray_message():
    assert base.run_grid(_square, [1, 2, 3]) == [1, 4, 9]
    with pytest.raises(GradwatchValueError, match="executor"):
        base.run_grid(_square, [1], executor="slurm")
    try:
        import ray  # noqa: F401
    except ImportError:
        with pytest.raises(GradwatchValueError, match="pip install"):
            base.run_grid(_square, [1], executor="ray")


def test_seeded_restores_global_state():
    threads = torch.get_num_threads()
    with base.seeded(1):
        a = torch.rand(3)
        assert torch.are_deterministic_algorithms_enabled()
    with base.seeded(1):
        b = torch.rand(3)
    assert torch.equal(a, b)
    assert not torch.are_deterministic_algorithms_enabled()
    assert torch.get_num_threads() == threads


def test_registry():
    for name, spec in EXPERIMENTS.items():
        assert spec.name == name and spec.description and spec.paper
        mod = spec.load()
        assert callable(mod.run) and callable(mod.claims)
        if name in ("glorot2010", "he2015", "residual"):
            assert "expected" in mod.__doc__.lower()  # the paper's expected result
    with pytest.raises(GradwatchValueError, match="glorot2010"):
        get("nope")
