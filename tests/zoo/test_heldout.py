"""The held-out zoo: its truth still holds, and gradwatch's score on it (slow).

``test_truth_holds`` re-measures each case without gradwatch and checks the training outcome
and the figures the case recorded when its truth was written. ``test_heldout_score`` runs
gradwatch on the whole set as ``python benchmarks/zoo_heldout.py`` does and asserts the
acceptance: at least 90% of the verdicts right (two per case) and no false "error" on a model
that trains.
"""

import pytest
from benchmarks.zoo.heldout import ENTRIES
from benchmarks.zoo.heldout.runner import render, run_heldout, score
from benchmarks.zoo.heldout.truth import drift, measure_entry


@pytest.mark.slow
@pytest.mark.parametrize("entry", ENTRIES, ids=[e.case.name for e in ENTRIES])
def test_truth_holds(entry):
    row = measure_entry(entry)
    train = row["train"]
    assert train["truth_held"], (
        f"{entry.case.name}: the loss was to {entry.case.train.outcome}, it "
        f"{train['outcome']} ({train['loss_start']:.3g} -> {train['loss_end']:.3g})")
    assert not drift(row), f"{entry.case.name}: recorded figures moved: {drift(row)}"


@pytest.mark.slow
def test_heldout_score():
    rows = run_heldout(jobs=2, progress=False)
    summ = score(rows)
    report = render(rows, summ)
    assert not summ["crashed"], report
    assert not summ["truth_not_held"], report
    assert not summ["false_errors"], report
    assert summ["cases"] >= 25
    assert summ["score"] >= 0.9, report
