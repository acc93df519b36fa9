"""xiong2020's theory line and DeepNorm arm: the claims hold on the quick run and fail on
doctored numbers; the pure claims on hand-made numbers (fast)."""

import copy
import json
import math
from pathlib import Path

import pytest

import gradwatch as gw
from gradwatch.experiments import xiong2020
from gradwatch.experiments import xiong2020_theory as theory

from .conftest import numbers_of, runs_of

DEPTHS = [6, 12]


def _line(measured, predicted):
    return {"measured": measured, "predicted": predicted, "verdict": "healthy", "draws": 8}


def _theory(shift_post=0.0, shift_pre=0.0, last_only=False):
    """Lines where the prediction is the measurement times 10**shift (at every layer, or
    at every layer but the last)."""
    out = {}
    for d in DEPTHS:
        m = [0.1 * 1.05**i for i in range(d)]
        for arch, shift in (("post-LN", shift_post), ("pre-LN", shift_pre)):
            p = [v * 10**shift for v in m]
            if last_only:
                p[-1] = m[-1]
            out[f"{arch}-L{d}"] = _line(m, p)
    return out


def _holds(claims, text):
    found = [c for c in claims if text in c["claim"]]
    assert len(found) == 1, text
    return found[0]["holds"]


LAST, PRE = "the last layer's FFN gradient", "every layer's FFN gradient of the pre-LN"


def test_tolerance_is_the_monte_carlo_checks():
    assert theory.tolerance(-0.5) == 0.1  # 0.1 decade near 1
    assert theory.tolerance(-4.0) == pytest.approx(0.2)  # 5% of the log far from 1


def test_theory_claims_hold_within_and_fail_outside_the_tolerance():
    ok = theory.theory_claims(_theory(0.09, -0.09), DEPTHS)
    assert _holds(ok, LAST) and _holds(ok, PRE)
    assert not _holds(theory.theory_claims(_theory(0.0, 0.12), DEPTHS), PRE)
    assert not _holds(theory.theory_claims(_theory(0.12, 0.0), DEPTHS), LAST)
    # post-LN off below the last layer: shown in the evidence, not claimed
    inner = theory.theory_claims(_theory(0.3, 0.0, last_only=True), DEPTHS)
    assert _holds(inner, LAST) and _holds(inner, PRE)
    worst = [c for c in inner if PRE in c["claim"]][0]["evidence"]
    assert worst["post_ln_worst_gap_over_tolerance"]["post-LN-L6"] == pytest.approx(3.0)
    # a missing layer, or the theory answering "uncertain", fails
    lines = _theory()
    lines["pre-LN-L12"]["predicted"] = lines["pre-LN-L12"]["predicted"][:-1] + [math.nan]
    assert not _holds(theory.theory_claims(lines, DEPTHS), PRE)
    lines = _theory()
    lines["post-LN-L6"]["verdict"] = "uncertain"
    assert not _holds(theory.theory_claims(lines, DEPTHS), LAST)


def _runs(deepnorm=0.01, post=2.5, flagged=()):
    run = {"loss_end": 0.01, "all_finite": True, "flagged": []}
    return {
        "post-LN": {**run, "loss_end": post, "flagged": ["stalled"]},
        "pre-LN": run,
        "DeepNorm": {**run, "loss_end": deepnorm, "flagged": list(flagged)},
    }


@pytest.mark.parametrize(
    ("runs", "updates", "trains", "bounded"),
    [
        (_runs(), {"post-LN": 1.6, "DeepNorm": 0.9}, True, True),
        (_runs(deepnorm=1.0), {"post-LN": 1.6, "DeepNorm": 0.9}, False, True),
        (_runs(post=0.05), {"post-LN": 1.6, "DeepNorm": 0.9}, False, True),
        (_runs(flagged=["stalled"]), {"post-LN": 1.6, "DeepNorm": 0.9}, True, True),  # shown
        (_runs(deepnorm=math.nan), {"post-LN": 1.6, "DeepNorm": 0.9}, False, True),
        (_runs(), {"post-LN": 1.6, "DeepNorm": 1.5}, True, False),
        (_runs(), {"post-LN": 1.6}, True, False),
    ],
)
def test_deepnorm_claims(runs, updates, trains, bounded):
    claims = theory.deepnorm_claims(runs, updates, math.log(15), 0.5, 0.1)
    assert _holds(claims, "the DeepNorm net trains") is trains
    assert _holds(claims, "bounds the update") is bounded


@pytest.mark.slow
def test_quick_run_theory_and_deepnorm(quick_result):
    result = quick_result("xiong2020")
    numbers = numbers_of(result)
    assert set(numbers["theory"]) == {f"{a}-L{d}" for a in ("post-LN", "pre-LN")
                                      for d in xiong2020.QUICK.probe_depths}  # fmt: skip
    for line in numbers["theory"].values():
        assert line["verdict"] != "uncertain" and line["draws"] == theory.DRAWS
        assert len(line["measured"]) == len(line["predicted"]) == line["depth"]
    assert gw.load(runs_of(result) / "runs" / "DeepNorm").meta["status"] == "closed"
    claims = xiong2020.claims(numbers)
    for text in (LAST, PRE, "the DeepNorm net trains", "bounds the update"):
        assert _holds(claims, text)

    def doctored(path, value):
        n = copy.deepcopy(numbers)
        node = n
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value(node[path[-1]]) if callable(value) else value
        return xiong2020.claims(n)

    # the measured pre-LN line a third of a decade above the theory in its middle layers
    up = lambda g: [v * (2.0 if 0 < i < len(g) - 1 else 1.0) for i, v in enumerate(g)]  # noqa: E731
    assert not _holds(doctored(("theory", "pre-LN-L12", "measured"), up), PRE)
    # post-LN's last layer 2x the theory's
    last2 = lambda g: [*g[:-1], 2 * g[-1]]  # noqa: E731
    assert not _holds(doctored(("theory", "post-LN-L24", "measured"), last2), LAST)
    assert not _holds(doctored(("runs", "DeepNorm", "loss_end"), 2.0), "the DeepNorm net trains")
    assert not _holds(doctored(("runs", "DeepNorm", "all_finite"), False), "DeepNorm net trains")
    assert not _holds(doctored(("first_update", "DeepNorm"), lambda v: 2 * v), "bounds the update")


def test_claims_without_theory_or_deepnorm_numbers():
    # numbers made before the theory line and the DeepNorm arm: judged on the six claims
    record = json.loads((Path(__file__).parent / "records" / "xiong2020_full_t1.json").read_text())
    numbers = copy.deepcopy(record["per_seed"][0]["numbers"])
    for key in ("theory", "first_update"):
        numbers.pop(key, None)
    numbers["runs"].pop("DeepNorm", None)
    claims = xiong2020.claims(numbers)
    assert len(claims) == 6 and all(c["holds"] for c in claims)
    assert len(xiong2020.claims(record["per_seed"][0]["numbers"])) == 10
