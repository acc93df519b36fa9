"""Full-scale claims against the records of full runs (seed 0), kept in records/.

The full runs take minutes to hours here, so their numbers are stored (result.json's
``numbers``) and the claims -- pure functions of those numbers -- are checked against them:
every claim holds on the honest record, and each full-scale claim fails on a doctored one.
"""

import copy
import json
import math
from pathlib import Path

import pytest

from gradwatch.experiments import get
from gradwatch.jsonable import jsonable

RECORDS = Path(__file__).parent / "records"
SPECIAL = (math.nan, math.inf, -math.inf)


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
    node[path[-1]] = value(node[path[-1]]) if callable(value) else value
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
    (
        "glorot2010",
        ("tuning", "tanh-normalized", "0.01", "test_error"),
        0.7,
        "each at the learning",
    ),
    ("glorot2010", ("tuning", "tanh-standard", "0.03", "test_error"), 0.6, "each at the learning"),
    ("pascanu2013", ("training", "adding/T100/lstm", "final"), 0.1, "the LSTM reaches"),
    ("pascanu2013", ("training", "adding/T100/rnn", "final"), 0.001, "the LSTM reaches"),
    ("pascanu2013", ("sweep", -1, "decay_slope"), -0.01, "separates the regimes"),
    ("residual", ("runs", "100-residual", "loss_end"), 2.2, "Degradation"),
    # xiong2020: post-LN as flat and small as pre-LN at init
    (
        "xiong2020",
        ("init", "post-LN-L24", "ffn_grad"),
        lambda g: [0.02] * len(g),
        "larger near the output",
    ),
    # pre-LN rising toward the output like post-LN
    (
        "xiong2020",
        ("init", "pre-LN-L12", "ffn_grad"),
        lambda g: [v * (1 + 0.2 * i) for i, v in enumerate(g)],
        "larger near the output",
    ),
    # the deep pre-LN net's last-layer gradient as large as the shallow one's
    (
        "xiong2020",
        ("init", "pre-LN-L24", "ffn_grad"),
        lambda g: [v * 3 for v in g],
        "shrinks at least about as 1/√L",
    ),
    # the deep post-LN net's last-layer gradient shrinking with depth
    (
        "xiong2020",
        ("init", "post-LN-L24", "ffn_grad"),
        lambda g: [v / 3 for v in g],
        "shrinks at least about as 1/√L",
    ),
    ("xiong2020", ("runs", "post-LN", "loss_end"), 0.01, "Without warmup"),
    ("xiong2020", ("runs", "pre-LN", "loss_end"), 2.7, "Without warmup"),
    ("xiong2020", ("runs", "pre-LN", "all_finite"), False, "Without warmup"),
    ("xiong2020", ("runs", "post-LN+warmup", "loss_end"), 2.7, "Warmup rescues"),
    ("xiong2020", ("runs", "post-LN+warmup", "all_finite"), False, "Warmup rescues"),
    ("xiong2020", ("runs", "post-LN", "flagged"), [], "gw.diagnose flags"),
    ("xiong2020", ("runs", "pre-LN", "flagged"), ["stalled"], "gw.diagnose flags"),
    # wortsman2023: the baseline's logits as tame as qk-layernorm's at lr 1, on one seed
    ("wortsman2023", ("runs", "baseline", "1", "0", "attn_logit_max"), 50.0,
     "attention logits grow"),
    # the baseline trains at lr 0.3 on seed 0: no learning rate left where only it fails
    ("wortsman2023", ("runs", "baseline", "0.3", "0", "final_loss"), 1.0,
     "training fails above"),
    # qk-layernorm fails at 0.3 on seed 1: its range is no wider there
    ("wortsman2023", ("runs", "qk-layernorm", "0.3", "1", "final_loss"), 4.5,
     "range of learning rates"),
    ("wortsman2023", ("runs", "qk-layernorm", "0.3", "1", "final_loss"), float("inf"),
     "range of learning rates"),
    # a failed baseline run gradwatch did not flag
    ("wortsman2023", ("runs", "baseline", "0.3", "2", "flagged"), [], "gw.diagnose flags"),
]


@pytest.mark.parametrize(("name", "path", "value", "text"), CASES)
def test_doctored_full_record_fails_claim(name, path, value, text):
    claims = get(name).load().claims
    numbers = _numbers(name)
    assert _claim(claims(numbers), text)["holds"]
    assert not _claim(claims(_doctor(numbers, path, value)), text)["holds"]


@pytest.mark.parametrize("name", NAMES)
def test_claims_read_a_record_with_non_finite_numbers_as_strings(name):
    # result.json writes NaN and ±inf as "nan", "inf", "-inf" (gradwatch.jsonable); the
    # claims read them back as floats, so a record read from disk decides as the numbers did
    claims = get(name).load().claims
    cases = [(p, v) for n, p, v, _ in CASES if n == name and not callable(v)]
    for path, value in [*cases, *((p, x) for p, _ in cases[:1] for x in SPECIAL)]:
        doctored = _doctor(_numbers(name), path, value)
        stored = json.loads(json.dumps(jsonable(doctored), allow_nan=False))
        assert [c["holds"] for c in claims(stored)] == [c["holds"] for c in claims(doctored)]
