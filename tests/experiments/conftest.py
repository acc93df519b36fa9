"""Each experiment's quick run, once per test session, shared by the tests that read it."""

import pytest

from gradwatch.experiments import EXPERIMENTS, run_experiment

_CACHE: dict = {}


@pytest.fixture(scope="session")
def quick_result(tmp_path_factory):
    """``quick_result(name)``: the result dict of ``name``'s quick run (seed 0), run once."""

    def get(name: str) -> dict:
        if name not in _CACHE:
            out = tmp_path_factory.mktemp(f"quick-{name}")
            _CACHE[name] = run_experiment(name, out, quick=True, seed=0, progress=False)
        return _CACHE[name]

    return get


def numbers_of(result: dict, index: int = 0) -> dict:
    """The numbers of one seed of a result (the first by default)."""
    return result["per_seed"][index]["numbers"]


def runs_of(result: dict, index: int = 0):
    """The folder holding one seed's ``runs/`` (the first seed's by default)."""
    from pathlib import Path

    return Path(result["per_seed"][index]["out_dir"])


OURS = ("glorot2010", "he2015", "residual", "micikevicius2018")
assert all(n in EXPERIMENTS for n in OURS)
