"""criticality (Schoenholz et al. 2017): quick claims, doctored records, repeatability, Ray."""

import copy
import importlib.util
from pathlib import Path

import numpy as np
import pytest

import gradwatch as gw
from gradwatch.experiments import criticality, run_experiment

from .conftest import numbers_of, runs_of

# a grid small enough for a few seconds (plus Ray's start-up where it runs on Ray)
TINY = dict(sigma_w2s=(1.0, 4.0), depths=(3, 6), steps=20, width=32, record_every=5)


def _claim(claims, text):
    found = [c for c in claims if text in c["claim"]]
    assert len(found) == 1, text
    return found[0]


def test_quick_claims_hold(quick_result):
    result = quick_result("criticality")
    assert result["quick"] is True and result["name"] == "criticality"
    assert len(result["claims"]) == 4
    for c in result["claims"]:
        assert c.get("scale", "any") == "any"
        assert c["holds"], f"{c['claim']} -- evidence {c['evidence']}"


def test_quick_outputs_and_numbers(quick_result):
    result = quick_result("criticality")
    n = numbers_of(result)
    out = runs_of(result)
    sw2, depths = n["sigma_w2s"], n["depths"]
    acc = np.asarray(n["accuracy"], dtype=float)
    assert acc.shape == (len(sw2), len(depths)) and np.all((acc >= 0) & (acc <= 1))
    # every grid point is a recorded run directory
    for s in sw2:
        for d in depths:
            run = gw.load(out / "runs" / f"sw{s:g}-L{d}")
            assert run.meta["status"] == "closed" and len(run.stats) > 0
    # the theory beside the measurement is gw.theory's
    limit = gw.theory.trainable_depth("tanh", np.asarray(sw2), n["sigma_b2"])
    assert np.allclose(n["theory"]["trainable_depth"], limit)
    assert n["critical_sigma_w2"] == pytest.approx(1.76, abs=0.01)
    # the shallowest nets all train, far from the critical line the deepest do not
    assert acc[:, 0].min() > 0.8
    assert acc[0, -1] < 0.2  # σw² = 0.5 at depth 60: ordered, correlations collapse
    png = Path(result["out_dir"]) / "figures" / "phase_diagram.png"
    assert png.is_file() and png.with_suffix(".svg").is_file()
    assert png.stat().st_size < 200_000


CASES = [
    # (path into numbers, doctored value, text of the claim that must fail)
    (("accuracy", 2, -1), 0.15, "At the largest depth"),  # the critical net at depth 60
    (("accuracy", 0, -1), 0.9, "At the largest depth"),  # the far-ordered one trains
    # the critical net trains at depth 5 only: others reach further
    (("accuracy", 2), lambda a: [a[0], 0.15, 0.15], "peaks at criticality"),
    (("accuracy", 0), lambda a: [0.9, 0.9, 0.9], "peaks at criticality"),  # far-ordered as deep
    (("accuracy",), lambda a: [[0.95] * len(row) for row in a], "where depth ≤ 6 ξ_c"),
    (("backprop_slope", 0, -1), 0.3, "changes by √χ1 per layer"),
]


@pytest.mark.parametrize(("path", "value", "text"), CASES)
def test_doctored_record_fails_claim(quick_result, path, value, text):
    numbers = numbers_of(quick_result("criticality"))
    assert _claim(criticality.claims(numbers), text)["holds"]  # the honest record supports it
    doctored = copy.deepcopy(numbers)
    node = doctored
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value(node[path[-1]]) if callable(value) else value
    assert not _claim(criticality.claims(doctored), text)["holds"]


def test_claims_are_pure(quick_result):
    numbers = numbers_of(quick_result("criticality"))
    before = copy.deepcopy(numbers)
    assert criticality.claims(numbers) == criticality.claims(numbers)
    assert numbers == before


def test_seeded_repeatable(tmp_path):
    # in this process (processes=1): the pool and Ray are compared with it by
    # test_executor_does_not_change_the_grid and test_ray_and_local_pool_give_the_same_grid
    kw = dict(TINY, processes=1)
    a = run_experiment("criticality", tmp_path / "a", quick=True, seed=5, progress=False, **kw)
    b = run_experiment("criticality", tmp_path / "b", quick=True, seed=5, progress=False, **kw)
    assert numbers_of(a) == numbers_of(b)
    assert a["claims"] == b["claims"]
    c = run_experiment("criticality", tmp_path / "c", quick=True, seed=6, progress=False, **kw)
    assert numbers_of(c)["accuracy"] != numbers_of(a)["accuracy"]


def test_executor_does_not_change_the_grid(tmp_path):
    # every grid point seeds itself: a local pool of 2 gives what this process gives
    grid = dict(TINY, depths=(3,))
    pool = run_experiment(
        "criticality", tmp_path / "pool", quick=True, seed=1, processes=2, progress=False, **grid
    )
    here = run_experiment(
        "criticality", tmp_path / "here", quick=True, seed=1, processes=1, progress=False, **grid
    )
    assert numbers_of(pool)["processes"] == 2 and numbers_of(here)["processes"] == 1
    strip = [{k: v for k, v in g.items() if k != "run_dir"} for g in numbers_of(pool)["grid"]]
    assert strip == [
        {k: v for k, v in g.items() if k != "run_dir"} for g in numbers_of(here)["grid"]
    ]
    assert numbers_of(pool)["accuracy"] == numbers_of(here)["accuracy"]
    assert numbers_of(pool)["train_loss"] == numbers_of(here)["train_loss"]


def test_point_seed_depends_on_the_point_only():
    assert criticality.point_seed(0, 1.76, 60) == criticality.point_seed(0, 1.76, 60)
    seeds = {criticality.point_seed(0, s, d) for s in (0.5, 1.0, 1.76) for d in (5, 20, 60)}
    assert len(seeds) == 9


@pytest.mark.skipif(
    importlib.util.find_spec("ray") is None,
    reason="Ray is not installed (pip install 'ray>=2.9'; CI installs it)",
)
def test_ray_and_local_pool_give_the_same_grid(tmp_path):
    grid = dict(TINY, depths=(3,))
    local = run_experiment(
        "criticality", tmp_path / "local", quick=True, seed=1, executor="local", **grid
    )
    on_ray = run_experiment(
        "criticality", tmp_path / "ray", quick=True, seed=1, executor="ray", **grid
    )
    assert numbers_of(local)["executor"] == "local" and numbers_of(on_ray)["executor"] == "ray"
    assert numbers_of(on_ray)["grid"] == numbers_of(local)["grid"]
    assert numbers_of(on_ray)["accuracy"] == numbers_of(local)["accuracy"]
    import ray

    assert not ray.is_initialized()  # the local instance was shut down after the grid
