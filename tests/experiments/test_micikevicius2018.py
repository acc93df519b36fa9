"""micikevicius2018: the numbers behind its claims are physical, and doctored ones fail."""

import copy

import pytest

from gradwatch.experiments import micikevicius2018 as mic

from .conftest import numbers_of


def _claim(claims, text):
    (found,) = [c for c in claims if text in c["claim"]]
    return found


def test_the_casts_flush_what_the_float32_run_predicted(quick_result):
    numbers = numbers_of(quick_result("micikevicius2018"))
    fp32, fp16 = numbers["runs"]["fp32"], numbers["runs"]["fp16"]
    out = fp16["layers"][-1]
    # the same weights and batch at step 0: the float32 run's statistic is the cast's count
    assert fp32["predicted_at_first_step"][out] == pytest.approx(
        fp16["flushed_at_first_step"][out], abs=1e-6)
    assert fp16["flushed_at_first_step"][out] > 0.5
    # the histogram lies below fp16's smallest subnormal, 2^-24, for most entries
    hist = fp32["histogram"]
    below = sum(h for h, lo in zip(hist, mic.BINS[:-1], strict=False) if lo < -25)
    assert below / sum(hist) > 0.5
    assert "underflow" in fp32["findings"]


@pytest.mark.parametrize(("mode", "key", "value", "text"), [
    ("fp16", "flushed_at_first_step", lambda old: dict.fromkeys(old, 0.1),
     "flushes at least half"),
    ("fp16", "loss_end", 0.01, "learns worse"),
    ("fp16_scaled", "loss_end", 2.0, "dynamic loss scaling"),
    ("fp32", "predicted_at_first_step", lambda old: dict.fromkeys(old, 0.3),
     "bp_underflow_fp16 of the float32"),
    ("fp32", "findings", [], "gw.diagnose reports underflow"),
])
def test_a_doctored_record_fails_its_claim(quick_result, mode, key, value, text):
    numbers = numbers_of(quick_result("micikevicius2018"))
    assert _claim(mic.claims(numbers), text)["holds"]
    doctored = copy.deepcopy(numbers)
    run = doctored["runs"][mode]
    run[key] = value(run[key]) if callable(value) else value
    assert not _claim(mic.claims(doctored), text)["holds"]
