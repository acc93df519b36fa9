"""The top of the HTML report: the outcome, before any detail.

Three questions, answered in this order, each in a sentence or two: **what was wrong** (the
verdict and the finding that decides it), **what was changed** (the remedies ``gw.fix``
applied, when a fix report is given), and **did it help** (the runs side by side, when
several are given: each run's verdict, held-out accuracy and loss, first and final, with one
sentence that says yes, no or not clearly, and by how much). A report of a single run says
what was found and what to try.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from gradwatch.report._data import findings_and_verdict
from gradwatch.report._html_parts import esc
from gradwatch.report.remedy_text import describe_remedy
from gradwatch.report.summary import (
    FINAL_LOSS_TEXT,
    FIRST_LOSS_TEXT,
    final_loss,
    first_loss,
    format_loss,
)
from gradwatch.store.reader import Run
from gradwatch.verdicts import verdict_of_kind

#: Held-out accuracy must change by at least this much (absolute) to count as a change.
ACCURACY_CHANGE = 0.05
#: The final loss must fall (rise) by at least this factor to count as a change.
LOSS_CHANGE = 0.8

Accuracy = Mapping[str, tuple[Sequence[int], Sequence[float]]]


def verdict_class(verdict: str) -> str:
    """CSS class of a verdict badge."""
    return {"healthy": "v-healthy", "not diagnosed": "v-unknown"}.get(verdict, "v-problem")


def headline(findings: Sequence[Any], verdict: str) -> Any:
    """The finding that decides the verdict (the first of the verdict's kind), or None."""
    for f in findings:
        if verdict_of_kind(f.kind) == verdict or f.kind == verdict:
            return f
    return findings[0] if findings else None


def outcome_section(
    run: Run,
    findings: Sequence[Any],
    verdict: str,
    source: str,
    fix_report: Any = None,
    compare: Mapping[str, Run] | None = None,
    accuracy: Accuracy | None = None,
    chance: float | None = None,
) -> str:
    """The outcome box at the top of the report (see the module docstring)."""
    name = run.meta.get("name") or (run.path.name if run.path else "checkup")
    parts = ['<section id="gw-outcome" class="outcome">', "<h2>Outcome</h2>"]
    top = headline(findings, verdict)
    wrong = (
        f"<b>The run {esc(name)}: {esc(verdict)}.</b> {esc(top.message)}" if top is not None
        and verdict not in ("healthy", "not diagnosed")
        else f"<b>The run {esc(name)}: {esc(verdict)}.</b> "
        + esc("Nothing found that predicts a failed or crippled training run."
              if verdict == "healthy" else source)
    )
    title = "What was wrong" if fix_report is not None or compare else "What gradwatch found"
    parts.append(
        f'<div class="q"><h3>{title}</h3>'
        f'<div id="gw-verdict" class="verdict {verdict_class(verdict)}">{esc(verdict.upper())}'
        f'</div> <span class="sub">verdict source: {esc(source)}</span><p>{wrong}</p></div>'
    )
    if fix_report is not None:
        parts.append(_changed(fix_report))
    elif top is not None and top.remedies:
        tries = ", ".join(f"<code>{esc(r)}</code>" for r in top.remedies)
        parts.append(f'<div class="q"><h3>What to try</h3><p>{tries}</p></div>')
    if compare and len(compare) >= 2:
        parts.append(_helped(compare, accuracy or {}, chance))
    parts.append("</section>")
    return "\n".join(parts)


def _changed(report: Any) -> str:
    applied = getattr(report, "applied", []) or []
    before = getattr(report, "verdict_before", "?")
    after = getattr(report, "verdict_after", "?")
    if applied:
        items = "".join(
            f"<li><b>{esc(name)}</b>: "
            f"{esc(describe_remedy(name, {k: v for k, v in details.items() if k != 'verdict'}))}"
            "</li>"
            for name, details in applied
        )
        body = f"<ol>{items}</ol>"
    else:
        body = "<p>nothing: no allowed remedy made the model measurably better</p>"
    return (
        '<div class="q"><h3>What was changed</h3>'
        f"<p>gw.fix changed a copy of the model; its one-batch check went from "
        f"<b>{esc(before)}</b> to <b>{esc(after)}</b>.</p>{body}</div>"
    )


def _final_accuracy(accuracy: Accuracy, label: str) -> tuple[float, float] | None:
    curve = accuracy.get(label)
    if curve is None or not len(curve[1]):
        return None
    return float(curve[1][0]), float(curve[1][-1])


def _accuracy_text(accuracy: Accuracy, label: str) -> str:
    """``10.6% (step 0) → 92.5% (step 399)``, or "–" when not measured."""
    curve = accuracy.get(label)
    if curve is None or not len(curve[1]):
        return "–"
    steps, values = list(curve[0]), list(curve[1])
    if len(values) == 1:
        return f"{values[0]:.1%} (step {steps[0]})"
    return f"{values[0]:.1%} (step {steps[0]}) → {values[-1]:.1%} (step {steps[-1]})"


def _helped(runs: Mapping[str, Run], accuracy: Accuracy, chance: float | None) -> str:
    labels = list(runs)
    verdicts = {label: findings_and_verdict(run)[1] for label, run in runs.items()}
    acc = {label: _final_accuracy(accuracy, label) for label in labels}
    first = {label: first_loss(run) for label, run in runs.items()}
    final = {label: final_loss(run) for label, run in runs.items()}
    rows = [
        ("verdict of the watched run",
         [f'<span class="{"ok" if verdicts[lb] == "healthy" else "bad"}">{esc(verdicts[lb])}'
          "</span>" for lb in labels]),
        ("held-out accuracy, first → final", [esc(_accuracy_text(accuracy, lb)) for lb in labels]),
        (f"first loss ({FIRST_LOSS_TEXT})", [esc(format_loss(first[lb])) for lb in labels]),
        (f"final loss ({FINAL_LOSS_TEXT})", [esc(format_loss(final[lb])) for lb in labels]),
        ("recorded steps", [str(len(runs[lb].steps)) for lb in labels]),
    ]
    head = "<tr><th></th>" + "".join(f"<th>{esc(lb)}</th>" for lb in labels) + "</tr>"
    body = "".join(
        f"<tr><th>{esc(name)}</th>" + "".join(f'<td class="num">{c}</td>' for c in cells)
        + "</tr>"
        for name, cells in rows
    )
    answer = _answer(labels[0], labels[-1], acc, final, verdicts, chance)
    return (
        '<div class="q"><h3>Did it help?</h3>'
        f'<p id="gw-answer">{answer}</p>'
        f'<table id="gw-compare" class="compare">{head}{body}</table>'
        '<p class="help">The runs trained on the same batches in the same order with the same '
        "optimizer; held-out accuracy is measured on data neither run trained on.</p></div>"
    )


def _answer(
    base: str,
    new: str,
    acc: Mapping[str, tuple[float, float] | None],
    final: Mapping[str, float | None],
    verdicts: Mapping[str, str],
    chance: float | None,
) -> str:
    """Yes / no / not clearly, with the numbers that say so (escaped HTML)."""
    a, b = acc.get(base), acc.get(new)
    la, lb = final.get(base), final.get(new)
    facts = []
    if a is not None and b is not None:
        diff = b[1] - a[1]
        word = "Yes" if diff >= ACCURACY_CHANGE else "No" if diff <= -ACCURACY_CHANGE else (
            "Not clearly")
        chance_text = f"; chance {chance:.0%}" if chance is not None else ""
        facts.append(f"Held-out accuracy {a[1]:.1%} → {b[1]:.1%} ({base} → {new}{chance_text}).")
    elif la is not None and lb is not None and math.isfinite(la) and la > 0:
        ratio = lb / la if math.isfinite(lb) else math.inf
        word = "Yes" if ratio <= LOSS_CHANGE else "No" if ratio >= 1 / LOSS_CHANGE else (
            "Not clearly")
    else:
        word = "Not measured"
    if la is not None and lb is not None:
        facts.append(f"Final loss {format_loss(la)} → {format_loss(lb)}.")
    facts.append(f"Verdict of the watched run {verdicts[base]} → {verdicts[new]}.")
    return f"<b>{esc(word)}.</b> " + esc(" ".join(facts))
