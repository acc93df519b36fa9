"""Claims are computed from the record: doctor a number and the claim fails."""

import copy

import pytest

from gradwatch.experiments import glorot2010, he2015, residual

from .conftest import numbers_of


def _holds(claims, text):
    found = [c for c in claims if text in c["claim"]]
    assert len(found) == 1, text
    return found[0]["holds"]


def _doctor(numbers, path, value):
    doctored = copy.deepcopy(numbers)
    node = doctored
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value(node[path[-1]]) if callable(value) else value
    return doctored


CASES = [
    # (module, experiment, path into numbers, doctored value, text of the claim that must fail)
    (
        glorot2010,
        "glorot2010",
        ("runs", "shapeset/tanh-standard", "backprop_ratio"),
        0.9,
        "shrinks toward the input",
    ),
    (
        glorot2010,
        "glorot2010",
        ("runs", "digits/tanh-normalized", "backprop_ratio"),
        0.2,
        "flatter",
    ),
    (
        glorot2010,
        "glorot2010",
        ("runs", "shapeset/sigmoid-standard", "act_mean_end"),
        [0.5, 0.5, 0.5, 0.55],
        "saturation at 0",
    ),
    (
        glorot2010,
        "glorot2010",
        ("runs", "shapeset/tanh-standard", "saturated_frac_end"),
        [0.0, 0.0, 0.0, 0.3],
        "saturates from the input side",
    ),
    (
        glorot2010,
        "glorot2010",
        ("runs", "shapeset/sigmoid-standard", "test_error"),
        0.1,
        "highest test error",
    ),
    (he2015, "he2015", ("runs", "30-xavier", "backprop_ratio"), 0.5, "below the He net's"),
    (
        he2015,
        "he2015",
        ("runs", "30-xavier", "curve_running"),
        lambda c: [0.4] * len(c),
        "Xavier net stalls",
    ),
    (
        he2015,
        "he2015",
        ("runs", "30-he", "curve_running"),
        lambda c: [2.3] * len(c),
        "Xavier net stalls",
    ),
    (he2015, "he2015", ("runs", "30-xavier", "steps_to_fall"), 100, "leaves the plateau"),
    (he2015, "he2015", ("runs", "30-he", "steps_to_fall"), None, "leaves the plateau"),
    (he2015, "he2015", ("runs", "22-xavier", "steps_to_fall"), 5, "starts reducing the loss"),
    (he2015, "he2015", ("runs", "30-he", "predicted_ratio"), 1e-3, "Mean-field theory"),
    (he2015, "he2015", ("runs", "30-he", "findings_at_init"), ["vanishing"], "gw.diagnose"),
    (residual, "residual", ("runs", "50-plain", "backprop_ratio"), 0.5, "plain net's"),
    (residual, "residual", ("runs", "50-residual", "backprop_ratio"), 1e-4, "residual net's"),
    (
        residual,
        "residual",
        ("runs", "30-plain+bn", "findings_at_init"),
        ["vanishing"],
        "no vanishing gradient",
    ),
    (residual, "residual", ("runs", "50-plain+bn", "loss_end"), 0.01, "trains worse than the"),
    (residual, "residual", ("runs", "50-residual", "loss_end"), 2.3, "Degradation"),
    (
        residual,
        "residual",
        ("runs", "30-plain+bn", "predicted_backprop_ratio"),
        1e6,
        "Mean-field theory predicts every net's",
    ),
]


@pytest.mark.parametrize(("module", "name", "path", "value", "text"), CASES)
def test_doctored_record_fails_claim(quick_result, module, name, path, value, text):
    numbers = numbers_of(quick_result(name))
    assert _holds(module.claims(numbers), text)  # the honest record supports it
    assert not _holds(module.claims(_doctor(numbers, path, value)), text)


def test_claims_are_pure(quick_result):
    numbers = numbers_of(quick_result("he2015"))
    before = copy.deepcopy(numbers)
    assert he2015.claims(numbers) == he2015.claims(numbers)
    assert numbers == before
