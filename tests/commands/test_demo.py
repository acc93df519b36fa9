"""``gradwatch demo`` end to end, as a user runs it (fewer training steps)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


def test_demo_prints_both_verdicts_and_writes_the_report(tmp_path):
    out = tmp_path / "demo"
    proc = subprocess.run(
        [sys.executable, "-m", "gradwatch.cli", "demo", "--out", str(out), "--steps", "60",
         "--json"],
        capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = " ".join(proc.stdout.split())  # rich wraps long lines
    assert "verdict before: vanishing" in text
    assert "verdict after: healthy" in text
    assert f"report: {out / 'report.html'}" in text.replace("\n", "")
    result = json.loads(proc.stdout[proc.stdout.index("{\n"):])
    assert result["verdict_before"] == "vanishing" and result["verdict_after"] == "healthy"
    assert result["run_verdict_before"] == "vanishing"
    assert result["after"]["final_loss"] < 0.7 * result["before"]["final_loss"]
    # one definition of the final loss: the same number in the terminal, the JSON and the
    # report (the mean training loss of the last 20 steps)
    import gradwatch as gw
    from gradwatch.report.summary import final_loss, first_loss, format_loss

    for key, run in (("before", out / "before"), ("after", out / "after")):
        assert result[key]["final_loss"] == pytest.approx(final_loss(gw.load(run)))
        assert result[key]["first_loss"] == pytest.approx(first_loss(gw.load(run)))
        shown = format_loss(result[key]["final_loss"])
        assert f"final loss {shown}" in text
    assert "mean training loss of the last 20 steps" in text
    html = (out / "report.html").read_text()
    outcome = html[html.index('<section id="gw-outcome"'):html.index("<h2>Findings</h2>")]
    for key in ("before", "after"):
        assert f'<td class="num">{format_loss(result[key]["final_loss"])}</td>' in outcome
        assert f"{result[key]['test_accuracy']:.1%}" in outcome
    assert "What was wrong" in outcome and "What was changed" in outcome
    assert "Did it help?" in outcome
    assert html.startswith("<!DOCTYPE html>") and "vanishing" in html
    # one page tells the whole story: diagnosis, what fix changed and why, both training runs
    # (loss and accuracy) side by side, gradient flow before and after, both verdicts
    for part in ("Findings", "What gw.fix changed, in order, and why", "why: ",
                 "Both training runs, side by side", "held-out accuracy",
                 "Back-propagated signal per layer, before and after"):
        assert part in html, part
    curve = result["after"]["accuracy_curve"]
    assert curve["steps"][0] == 0 and curve["steps"][-1] == 59
    assert f"{result['after']['test_accuracy']:.1%}" in html
    assert f"{result['before']['test_accuracy']:.1%}" in html
    assert "``" not in html and "items>" not in proc.stdout
    assert (out / "before" / "meta.json").is_file() and (out / "after" / "meta.json").is_file()


def test_demo_rejects_bad_arguments():
    proc = subprocess.run([sys.executable, "-m", "gradwatch.cli", "demo", "--steps", "0"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert "--steps must be a positive integer" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_the_demo_and_its_report_quote_the_same_first_and_final_loss(tmp_path):
    """One definition (gradwatch.report.summary): the demo's JSON and printed line, and the
    report's outcome table, give the same final loss for the same run (0.116 in the terminal
    beside 0.090 in the report no more)."""
    import io

    from rich.console import Console
    from rich.progress import Progress

    import gradwatch as gw
    from gradwatch.demo import DemoConfig, digits, result_line, sigmoid_mlp, train
    from gradwatch.report._html_outcome import outcome_section
    from gradwatch.report.summary import final_loss, first_loss, format_loss

    cfg = DemoConfig(depth=3, width=8, steps=25, batch=16, eval_every=5)
    data = digits(0)
    runs = {}
    for label in ("original", "fixed"):
        with Progress(console=Console(file=io.StringIO())) as progress:
            res = train(sigmoid_mlp(3, 8, 0), data, cfg, tmp_path / label, progress, label)
        run = gw.load(tmp_path / label)
        assert res["final_loss"] == final_loss(run) and res["first_loss"] == first_loss(run)
        assert res["first_loss"] == run.loss().iloc[0]  # the first step's loss, not a mean
        runs[label] = (run, res)
    line = " ".join(result_line("before", "vanishing", "vanishing", runs["original"][1]).split())
    shown = format_loss(final_loss(runs["original"][0]))
    assert f"final loss {shown}" in line
    accuracy = {label: (res["accuracy_curve"]["steps"], res["accuracy_curve"]["test_accuracy"])
                for label, (_, res) in runs.items()}
    outcome = outcome_section(runs["original"][0], [], "healthy", "stored",
                              compare={k: r for k, (r, _) in runs.items()}, accuracy=accuracy)
    assert f'<td class="num">{shown}</td>' in outcome
    assert f'<td class="num">{format_loss(first_loss(runs["fixed"][0]))}</td>' in outcome
