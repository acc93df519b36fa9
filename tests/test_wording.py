"""Numbers in messages: written as an engineer would, never "10^0-fold" or "×8.9×10^0"."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gradwatch.verdicts import VERDICT_PRECEDENCE, VERDICTS, depth_verdict, verdict
from gradwatch.wording import number, per_layer, times


@pytest.mark.parametrize(
    ("x", "text"),
    [
        (0.0, "0"),
        (3.14159, "3.1"),
        (20.3, "20"),
        (250.0, "250"),
        (0.012345, "0.012"),
        (1.5e-7, "1.5e-7"),
        (1.2e6, "1.2e6"),
        (1e20, "1e20"),
        (-0.5, "-0.5"),
        (1.0, "1"),
        (math.nan, "NaN"),
        (math.inf, "Inf"),
    ],
)
def test_number(x, text):
    assert number(x) == text


@pytest.mark.parametrize(
    ("ratio", "text"),
    [(20.3, "20×"), (1.0, "1×"), (0.0004, "1/2500"), (0.5, "1/2"), (0.0, "0 (underflow)")],
)
def test_times(ratio, text):
    assert times(ratio) == text


def test_per_layer():
    assert per_layer(0.7071) == "0.71 per layer"


@given(st.floats(min_value=1e-300, max_value=1e300))
def test_number_reads_back_within_its_precision(x):
    text = number(x)
    assert "^" not in text and "×" not in text and not text.endswith(".0")
    assert float(text) == pytest.approx(x, rel=0.051)


def test_one_verdict_vocabulary():
    assert set(VERDICT_PRECEDENCE) | {"healthy"} == set(VERDICTS)
    assert verdict([]) == "healthy"


def test_depth_verdict_thresholds():
    assert depth_verdict(5e-4, 0.9) == ("vanishing", "error")
    assert depth_verdict(5e-3, 0.8) == ("vanishing", "warning")
    assert depth_verdict(5e-3, 0.9) is None  # a one-off drop, not a geometric decay
    assert depth_verdict(2e3, 1.0) == ("exploding", "error")
    assert depth_verdict(2e3, 1.5, plain_chain=False) is None  # BN / residual nets
    assert depth_verdict(15.0, 1.15) == ("exploding", "warning")
    assert depth_verdict(1.0, 1.0) is None
