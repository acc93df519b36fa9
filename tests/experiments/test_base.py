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
        "evidence": {"a": "nan", "b": [1.0, 2.0]},  # gradwatch.jsonable's convention
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
    assert on_disk["numbers"] == {"v": "inf", "w": 2} and on_disk["seed"] == 5
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


def test_execute_is_the_shared_runner(tmp_path):
    from dataclasses import dataclass

    @dataclass(frozen=True)
    class Cfg:
        n: int = 3

    seen = {}

    def measure(cfg, out, seed, bar, extra="none"):
        bar.total(cfg.n)
        seen.update(n=cfg.n, seed=seed, extra=extra, draw=float(torch.rand(())))
        return {"n": cfg.n, "draw": seen["draw"]}

    def claims(numbers):
        return [
            base.claim("n is 5", numbers["n"] == 5),
            base.claim("n is big", numbers["n"] > 100, scale="full"),
        ]

    def plot(out, numbers, cfg):
        return [out / "figures" / "none.png"]

    args = ("t", measure, claims, plot, Cfg(n=50), Cfg(n=3), tmp_path)
    r = base.execute(*args, quick=True, seed=7, overrides={"n": 5}, options={"extra": "x"})
    assert seen["n"] == 5 and seen["seed"] == 7 and seen["extra"] == "x"
    assert [c["status"] for c in r["claims"]] == ["holds", base.NOT_RUN]
    assert base.outcome(r) and base.load_result(tmp_path)["numbers"]["n"] == 5
    again = base.execute(*args, quick=True, seed=7, overrides={"n": 5})
    assert again["numbers"]["draw"] == r["numbers"]["draw"]  # seeded
    full = base.execute(*args, quick=False, seed=7)
    assert full["numbers"]["n"] == 50 and [c["status"] for c in full["claims"]] == [
        "fails",
        "fails",
    ]
    assert not base.outcome(full)
