"""Same seed, same numbers: the experiments are repeatable."""

import pytest

from gradwatch.experiments import run_experiment


def test_tiny_run_twice_identical(tmp_path):
    kw = dict(quick=True, seed=3, progress=False, depths=(4, 8), steps=20, probe_size=64)
    a = run_experiment("he2015", tmp_path / "a", **kw)
    b = run_experiment("he2015", tmp_path / "b", **kw)
    assert a["numbers"] == b["numbers"]
    assert a["claims"] == b["claims"]
    c = run_experiment("he2015", tmp_path / "c", **{**kw, "seed": 4})
    assert c["numbers"] != a["numbers"]


@pytest.mark.slow
def test_quick_run_twice_identical(quick_result, tmp_path):
    first = quick_result("he2015")
    again = run_experiment("he2015", tmp_path / "again", quick=True, seed=0, progress=False)
    assert again["numbers"] == first["numbers"]
