"""The HTML report leads with the outcome, says which run its figures show, and shows settings
and evidence as tables a person reads, never as Python or JSON dumps."""

from __future__ import annotations

import html as html_lib
import re

import numpy as np
import torch
from torch import nn

import gradwatch as gw
from gradwatch.findings import Finding
from gradwatch.report._data import findings_and_verdict
from gradwatch.report._html_outcome import outcome_section
from gradwatch.report.html import MIN_FOLDED, SHOWN_LAYERS
from gradwatch.report.summary import LOSS_WINDOW, final_loss, first_loss, format_loss


def text_of(path):
    return path.read_text(encoding="utf-8")


def section(text, start, end="</section>"):
    part = text[text.index(start):]
    return part[:part.index(end)]


def plain(fragment):
    """The text a reader sees: tags removed, entities decoded, spaces collapsed."""
    text = " ".join(html_lib.unescape(re.sub(r"<[^>]+>", " ", fragment)).split())
    return re.sub(r"\s+([,.;:)])", r"\1", text)


def test_the_outcome_comes_first_what_was_wrong_changed_and_did_it_help(
        compare_html, sigmoid_run, mixed_run, fix_report):
    text = text_of(compare_html)
    outcome = section(text, '<section id="gw-outcome"')
    # before any detail: right under the title, before the findings and every figure
    assert text.index('id="gw-outcome"') < text.index("<h2>Findings</h2>")
    assert "data:image" not in text[:text.index('id="gw-outcome"')]
    seen = plain(outcome)
    # what was wrong: the verdict and the finding that decides it
    assert "What was wrong" in seen and "VANISHING" in seen
    vanishing = next(f for f in gw.diagnose(sigmoid_run) if f.kind == "vanishing")
    assert vanishing.message in seen
    # what was changed: every remedy gw.fix applied, and the checks before and after
    assert "What was changed" in seen
    for name, _ in fix_report.applied:
        assert name in seen
    assert f"from {fix_report.verdict_before} to {fix_report.verdict_after}" in seen
    # did it help: yes, with both runs' held-out accuracy, loss and verdicts
    answer = plain(re.search(r'<p id="gw-answer">(.*?)</p>', outcome, flags=re.S).group(1))
    assert answer.startswith("Yes.")
    assert "Held-out accuracy 33.0% → 90.0% (original → fixed; chance 33%)." in answer
    table = plain(re.search(r'<table id="gw-compare".*?</table>', outcome, flags=re.S).group(0))
    assert "original fixed" in table
    assert "30.0% (step 0) → 33.0% (step 8)" in table and "32.0% (step 0) → 90.0% (step 8)" in table
    for run in (sigmoid_run, mixed_run):
        assert format_loss(final_loss(run)) in table and format_loss(first_loss(run)) in table


def outcome(run, **kw):
    """The outcome section alone (write_html renders it first; no figures drawn here)."""
    found, verdict, source = findings_and_verdict(run)
    return outcome_section(run, found, verdict, source, **kw)


def test_a_change_that_did_not_help_is_called_so(sigmoid_run, mixed_run):
    runs = {"original": sigmoid_run, "fixed": mixed_run}
    for accuracy, word in (
        ({"original": ([0, 8], [0.30, 0.50]), "fixed": ([0, 8], [0.31, 0.48])}, "Not clearly."),
        ({"original": ([0, 8], [0.30, 0.70]), "fixed": ([0, 8], [0.31, 0.40])}, "No."),
        ({"original": ([0, 8], [0.30, 0.30]), "fixed": ([0, 8], [0.31, 0.90])}, "Yes."),
    ):
        answer = re.search(r'<p id="gw-answer">(.*?)</p>', outcome(sigmoid_run, compare=runs,
                                                                  accuracy=accuracy), flags=re.S)
        assert plain(answer.group(1)).startswith(word), (accuracy, answer.group(1))
    # without accuracy, the final loss decides: the same run twice is not an improvement
    same = outcome(sigmoid_run, compare={"original": sigmoid_run, "again": sigmoid_run})
    assert plain(re.search(r'<p id="gw-answer">(.*?)</p>', same, flags=re.S).group(1)).startswith(
        "Not clearly.")


def test_a_single_run_report_says_what_was_found_and_what_to_try(sigmoid_run):
    seen = plain(outcome(sigmoid_run))
    assert "What gradwatch found" in seen and "What to try" in seen
    assert "Did it help" not in seen and "What was changed" not in seen


def test_first_and_final_loss_have_one_definition(sigmoid_run):
    loss = sigmoid_run.loss().to_numpy()
    assert first_loss(sigmoid_run) == loss[0]
    assert np.isclose(final_loss(sigmoid_run), loss[-LOSS_WINDOW:].mean())
    assert np.isclose(final_loss(sigmoid_run, window=3), loss[-3:].mean())
    assert format_loss(None) == "–" and format_loss(float("nan")) == "nan"


def test_final_loss_of_a_run_that_blew_up_is_not_finite():
    torch.manual_seed(0)
    model = nn.Linear(4, 1)
    with gw.watch(model, None) as mon:
        for loss in (1.0, 0.5, float("inf")):
            model.zero_grad()
            model(torch.randn(2, 4)).sum().backward()
            mon.step(loss=loss)
    assert final_loss(mon.run) == float("inf") and first_loss(mon.run) == 1.0


def test_the_figures_say_which_run_they_show(compare_html, sigmoid_run):
    text = text_of(compare_html)
    name = sigmoid_run.meta.get("name") or sigmoid_run.path.name
    figures = section(text, "<h2>Figures: the run ")
    assert figures.startswith(f"<h2>Figures: the run {html_lib.escape(name)}</h2>")
    note = plain(re.search(r'<p class="help" id="gw-figures-of">(.*?)</p>', figures,
                           flags=re.S).group(1))
    assert f"of one run: {name} ({sigmoid_run.path})" in note
    # the other run has no report of its own here: the note says how to draw its figures
    assert "The other run, fixed, is compared with this one above; gradwatch report " in note
    captions = re.findall(r"<figcaption>(.*?)<", figures)
    assert captions and all(caption.endswith(f"(run {html_lib.escape(name)})")
                            for caption in captions)


def test_settings_and_evidence_are_tables_not_dumps(compare_html, sigmoid_run):
    text = text_of(compare_html)
    settings = section(text, "<h2>Run settings</h2>")
    settings = settings[:settings.index("<details><summary>model</summary>")]  # its repr, as is
    seen = plain(settings)
    # no Python or JSON dump: no braces, brackets, None, True/False or raw time stamps
    for dump in ("{", "[", "None", "True", "False", "'started'"):
        assert dump not in seen, (dump, seen[:400])
    assert not re.search(r"\b1\d{9}\.\d", seen)  # a Unix time stamp
    # the writing sessions: a table each, numbered, with dates
    sessions = section(settings, "<h3>Writing sessions</h3>", "</div>")
    n = len(sigmoid_run.meta["sessions"])
    assert sessions.count('<table class="kv session">') == n and f"session 1 of {n}" in sessions
    assert re.search(r"<th>started</th><td>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d</td>", sessions)
    # one row per kind of activation, not one per module
    assert seen.count("Sigmoid (sigmoid)") == 1
    for title in ("Run", "Recording settings", "Model", "Versions and host"):
        assert f"<h3>{title}</h3>" in settings
    # evidence: a table of numbers and a per-layer table, no dump, no None
    evidence = re.findall(r'<details class="evidence">(.*?)</details>', text, flags=re.S)
    assert evidence
    for block in evidence:
        shown = plain(block)
        assert "{" not in shown and "None" not in shown and "[" not in shown
    vanishing = next(f for f in gw.diagnose(sigmoid_run) if f.kind == "vanishing")
    first = plain(evidence[0])
    per_layer = [k for k, v in vanishing.evidence.items() if isinstance(v, dict)]
    assert per_layer and all(k in first for k in per_layer)
    rows = re.findall(r'<table class="per-layer">.*?</table>', evidence[0], flags=re.S)[0]
    layers = re.findall(r'<tr><td><code class="name">([^<]*)</code>', rows)
    assert layers == [ly for ly in sigmoid_run.layers if ly in layers]  # the run's order
    assert len(layers) == len(vanishing.evidence[per_layer[0]])


def _finding(n):
    return Finding("vanishing", tuple(str(i) for i in range(n)), (0, 9), "error", "m",
                   {"still_learning": None, "persists": True}, ("relu",))


def test_a_fold_never_hides_one_or_two_layers(sigmoid_run, tmp_path):
    from gradwatch.report.html import _finding as render

    for n in range(1, SHOWN_LAYERS + MIN_FOLDED):
        assert "more</summary>" not in render(_finding(n)), n
    folded = render(_finding(SHOWN_LAYERS + MIN_FOLDED))
    assert f"and {MIN_FOLDED} more</summary>" in folded
    # None and flags in evidence read as words
    shown = plain(render(_finding(3)))
    assert "still_learning –" in shown and "persists yes" in shown
