"""The framework: claims, result.json, outcome, grids, registry."""

import json
import math

import numpy as np
import pytest
import torch

from gradwatch.errors import GradwatchValueError
from gradwatch.experiments import EXPERIMENTS, base, get, runner
from gradwatch.experiments import seeds as seeds_mod


def _square(v):
    return v * v


def test_claim_and_jsonable():
    c = base.claim("x", torch.tensor(True).numpy(), a=float("nan"), b=torch.tensor([1.0, 2.0]))
    assert c == {
        "claim": "x",
        "holds": True,
        "evidence": {"a": "nan", "b": [1.0, 2.0]},  # gradwatch.jsonable's convention
        "scale": "any",
        "need": "all",
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

    seen = []

    def measure(cfg, out, seed, bar, extra="none"):
        bar.total(cfg.n)
        draw = float(torch.rand(()))
        seen.append({"n": cfg.n, "seed": seed, "extra": extra, "out": out, "draw": draw,
                     "threads": torch.get_num_threads()})  # fmt: skip
        return {"n": cfg.n, "draw": draw}

    def claims(numbers):
        return [
            base.claim("n is 5", numbers["n"] == 5),
            base.claim("n is big", numbers["n"] > 100, scale="full"),
        ]

    def plot(out, runs, cfg):
        assert [r.seed for r in runs] == [7] and runs[0].out == tmp_path / "seed-7"
        return [out / "figures" / "none.png"]

    args = ("t", measure, claims, plot, Cfg(n=50), Cfg(n=3), tmp_path)
    r = base.execute(*args, quick=True, seed=7, overrides={"n": 5}, options={"extra": "x"})
    assert seen[-1]["n"] == 5 and seen[-1]["seed"] == 7 and seen[-1]["extra"] == "x"
    assert seen[-1]["out"] == tmp_path / "seed-7" and seen[-1]["threads"] == 1
    assert r["seeds"] == [7] and r["threads"] == 1  # quick mode: one seed by default
    assert [c["status"] for c in r["claims"]] == ["holds", base.NOT_RUN]
    assert r["claims"][0]["claim"] == "n is 5 [in 1 of 1 seed]"
    assert base.outcome(r) and base.load_result(tmp_path)["per_seed"][0]["numbers"]["n"] == 5
    assert base.load_result(tmp_path / "seed-7")["numbers"]["n"] == 5
    again = base.execute(*args, quick=True, seed=7, overrides={"n": 5})
    assert again["per_seed"][0]["numbers"]["draw"] == r["per_seed"][0]["numbers"]["draw"]
    # full mode: three seeds by default, each its own draw, every claim judged over them
    full = base.execute(*args[:3], None, *args[4:], quick=False, seed=7, threads=2)
    assert full["seeds"] == [7, 8, 9] and full["threads"] == 2
    assert [s["threads"] for s in seen[-3:]] == [2, 2, 2]
    assert len({s["draw"] for s in seen[-3:]}) == 3
    assert [c["status"] for c in full["claims"]] == ["fails", "fails"]
    assert [c["held_in"] for c in full["claims"]] == [0, 0]
    assert not base.outcome(full)
    assert torch.get_num_threads() == 1  # put back after the run
    with pytest.raises(GradwatchValueError, match="seeds"):
        base.execute(*args, seeds=0)
    with pytest.raises(GradwatchValueError, match="threads"):
        base.execute(*args, threads=0)


def _claims(numbers):
    return [
        base.claim("a holds everywhere", numbers["a"] > 0, a=numbers["a"]),
        base.claim("b holds mostly", numbers["b"] > 0, need="majority", b={"v": numbers["b"]}),
    ]


def test_over_seeds_counts_and_needs():
    seeds = [0, 1, 2]
    honest = [{"a": 1.0, "b": 2.0}, {"a": 3.0, "b": 1.0}, {"a": 2.0, "b": 5.0}]
    a, b = seeds_mod.claims_over_seeds(_claims, honest, seeds)
    assert a["holds"] and a["need"] == 3 and a["held_in"] == 3
    assert a["claim"] == "a holds everywhere [in 3 of 3 seeds]"
    assert b["holds"] and b["need"] == 2 and b["claim"] == "b holds mostly [in ≥ 2 of 3 seeds]"
    assert a["evidence"]["spread"]["a"] == {"median": 2.0, "min": 1.0, "max": 3.0, "n": 3}
    assert b["evidence"]["spread"]["b.v"]["median"] == 2.0
    assert a["evidence"]["per_seed"]["1"] == {"a": 3.0}
    # one bad seed: "all" fails, "majority" holds; two bad seeds: both fail
    one = [dict(honest[0], a=-1.0, b=-1.0), *honest[1:]]
    a, b = seeds_mod.claims_over_seeds(_claims, one, seeds)
    assert not a["holds"] and a["per_seed"] == [False, True, True] and b["holds"]
    two = [dict(n, b=-1.0) for n in honest[:2]] + honest[2:]
    assert not seeds_mod.claims_over_seeds(_claims, two, seeds)[1]["holds"]
    # a NaN in one seed is left out of the spread and counts as not holding
    nan = [dict(honest[0], a=float("nan")), *honest[1:]]
    a, _ = seeds_mod.claims_over_seeds(_claims, nan, seeds)
    assert not a["holds"] and a["evidence"]["spread"]["a"]["n"] == 2


def test_over_seeds_refuses_mismatched_claims():
    with pytest.raises(GradwatchValueError, match="one list of claims per seed"):
        seeds_mod.over_seeds([[base.claim("x", True)]], [0, 1])
    with pytest.raises(GradwatchValueError, match="same claims"):
        seeds_mod.over_seeds([[base.claim("x", True)], []], [0, 1])
    with pytest.raises(GradwatchValueError, match="need"):
        base.claim("x", True, need="most")


def test_seed_list_and_phrase():
    assert seeds_mod.seed_list(5, 3) == [5, 6, 7]
    for bad in (0, -1, 1.5, True, "3"):
        with pytest.raises(GradwatchValueError, match="seeds must be a positive integer"):
            seeds_mod.seed_list(0, bad)
    assert seeds_mod.phrase(3, 3) == "in 3 of 3 seeds"
    assert seeds_mod.phrase(2, 3) == "in ≥ 2 of 3 seeds"
    assert seeds_mod.phrase(1, 1) == "in 1 of 1 seed"
    assert [seeds_mod.needed("majority", n) for n in (1, 2, 3, 4, 5)] == [1, 2, 2, 3, 3]


def test_band_and_bars_draw_median_and_range():
    fig, ax = base.new_figure()
    seeds_mod.band(ax, [0, 1, 2], [[1, 2, 3], [3, 4, 5], [2, 9, 4]], "C0", "curve")
    line = ax.get_lines()[0]
    assert list(line.get_ydata()) == [2, 4, 4] and "3 seeds" in line.get_label()
    band = ax.collections[0].get_paths()[0].vertices[:, 1]
    assert band.min() == 1 and band.max() == 9
    x, ys = seeds_mod.align([([0, 2], [1.0, 2.0]), ([0, 1], [3.0, None])])
    assert list(x) == [0, 1, 2] and np.isnan(ys[0][1]) and np.isnan(ys[1][1])
    fig, ax = base.new_figure()
    seeds_mod.bars(ax, [0, 1], [[1, 10], [3, 20], [2, 30]], 0.5)
    assert [p.get_height() for p in ax.patches] == [2, 20]


def test_gather_rejudges_seeds_run_separately(tmp_path, monkeypatch):
    from tests.experiments import fake_experiment as fake

    for s in (0, 1, 2):  # three processes, one seed each, into the same folder
        fake.run(tmp_path, quick=True, seed=s, seeds=1, progress=False)
    assert base.load_result(tmp_path)["seeds"] == [2]  # the last process's
    plot = []
    monkeypatch.setattr(fake, "plot", lambda out, runs, cfg: plot.append(runs) or [], raising=False)
    result = runner.gather(fake, tmp_path)
    assert result["seeds"] == [0, 1, 2] and [c["held_in"] for c in result["claims"]] == [3, 0, 2]
    assert [r.seed for r in plot[0]] == [0, 1, 2]
    assert base.load_result(tmp_path)["seeds"] == [0, 1, 2]
    fake.run(tmp_path / "t2", quick=True, seed=3, seeds=1, threads=2, progress=False)
    (tmp_path / "seed-3").symlink_to(tmp_path / "t2" / "seed-3")
    with pytest.raises(GradwatchValueError, match="differ in 'threads'"):
        runner.gather(fake, tmp_path)
    with pytest.raises(GradwatchValueError, match="no seed"):
        runner.gather(fake, tmp_path / "empty")
