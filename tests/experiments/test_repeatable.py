"""Same seed, same numbers: the experiments are repeatable."""

import pytest

from gradwatch.experiments import run_experiment

from .conftest import numbers_of


def test_tiny_run_twice_identical(tmp_path):
    kw = dict(quick=True, seed=3, progress=False, depths=(4, 8), steps=20, probe_size=64)
    a = run_experiment("he2015", tmp_path / "a", **kw)
    b = run_experiment("he2015", tmp_path / "b", **kw)
    assert numbers_of(a) == numbers_of(b)
    assert a["claims"] == b["claims"]
    c = run_experiment("he2015", tmp_path / "c", **{**kw, "seed": 4})
    assert numbers_of(c) != numbers_of(a)


@pytest.mark.slow
def test_quick_run_twice_identical(quick_result, tmp_path):
    first = quick_result("he2015")
    again = run_experiment("he2015", tmp_path / "again", quick=True, seed=0, progress=False)
    assert numbers_of(again) == numbers_of(first)
