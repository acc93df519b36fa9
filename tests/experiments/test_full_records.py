"""Full-scale claims against the records of full runs (seed 0), kept in records/.

The full runs take minutes to hours here, so their numbers are stored (result.json's
``numbers``) and the claims -- pure functions of those numbers -- are checked against them:
every claim holds on the honest record, and each full-scale claim fails on a doctored one.
"""

import copy
import json
from pathlib import Path

import pytest

from gradwatch.experiments import get

RECORDS = Path(__file__).parent / "records"


def _numbers(name):
    return json.loads((RECORDS / f"{name}_full.json").read_text())["numbers"]


def _claim(claims, text):
    found = [c for c in claims if text in c["claim"]]
    assert len(found) == 1, text
    return found[0]


def _doctor(numbers, path, value):
    doctored = copy.deepcopy(numbers)
    node = doctored
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return doctored


NAMES = sorted(p.name.removesuffix("_full.json") for p in RECORDS.glob("*_full.json"))


@pytest.mark.parametrize("name", NAMES)
def test_every_claim_holds_on_the_full_record(name):
    for c in get(name).load().claims(_numbers(name)):
        assert c["holds"], f"{name}: {c['claim']} -- evidence {c['evidence']}"


CASES = [
    # (experiment, path into numbers, doctored value, text of the claim that must fail)
    ("he2015", ("runs", "30-he", "loss_end"), 0.5, "Over the full run"),
    ("he2015", ("runs", "30-he", "loss_end"), float("nan"), "Over the full run"),
    ("he2015", ("runs", "30-xavier", "loss_end"), 0.2, "Over the full run"),
    ("he2015", ("runs", "22-xavier", "loss_min_running"), 2.0, "the Xavier net trains too"),
    ("xiong2020", ("runs", "post-LN", "loss_end"), 0.05, "Without warmup"),
    ("xiong2020", ("runs", "post-LN+warmup", "loss_end"), 1.0, "Warmup rescues"),
]


@pytest.mark.parametrize(("name", "path", "value", "text"), CASES)
def test_doctored_full_record_fails_claim(name, path, value, text):
    claims = get(name).load().claims
    numbers = _numbers(name)
    assert _claim(claims(numbers), text)["holds"]
    assert not _claim(claims(_doctor(numbers, path, value)), text)["holds"]
