"""The HTML report: self-contained, verdict and findings first, every name escaped."""

from __future__ import annotations

import html
import json
import re

import gradwatch as gw
from gradwatch.report import write_html
from gradwatch.report.html import script_json

from .conftest import DETAIL_EVERY, XSS, XSS_TITLE

REMOTE = re.compile(
    r"""(?:\b(?:src|href|action|poster|data)\s*=\s*["']?\s*(?:https?:)?//)"""
    r"""|url\(\s*["']?\s*(?:https?:)?//|@import""",
    re.I,
)


def page(path):
    return path.read_text(encoding="utf-8")


def markup(text):
    """The page without the JSON data block (checked separately)."""
    return re.sub(r'<script id="gw-flow-data".*?</script>', "", text, flags=re.S)


def test_self_contained_no_remote_resources(mixed_html):
    text = page(mixed_html)
    assert REMOTE.search(text) is None
    assert "http://" not in text and "https://" not in text
    assert "<link" not in text and not re.search(r"<script[^>]*\bsrc=", text)
    # figures are embedded images, each in a wide and a phone layout
    assert text.count('src="data:image/svg+xml;base64,') == 2 * 6
    assert text.count('class="fig-wide"') == text.count('class="fig-narrow"') == 6


def test_verdict_and_findings_come_first(mixed_run, mixed_html):
    text = page(mixed_html)
    found = gw.diagnose(mixed_run)
    want = gw.diagnose.__globals__["verdict"](found)
    m = re.search(r'<div id="gw-verdict" class="verdict [^"]+">([^<]+)</div>', text)
    assert m and m.group(1) == want.upper()
    assert text.index('id="gw-outcome"') < text.index("<h2>Findings</h2>")
    assert text.index("<h2>Findings</h2>") < text.index("<h2>Figures: the run ")
    assert text.index("<h2>Figures: the run ") < text.index("Layers at the last recorded step")
    assert text.index("Layers at the last recorded step") < text.index("<h2>Run settings</h2>")
    for f in found:
        assert html.escape(f.message) in text


def test_every_layer_name_is_escaped_and_no_markup_is_injected(mixed_run, mixed_html):
    text = page(mixed_html)
    body = markup(text)
    for name in mixed_run.layers:
        assert f'<code class="name">{html.escape(name)}</code>' in body
    assert "<script>alert(1)" not in text
    assert "<img src=x" not in text
    assert body.count("<script") == 1  # the report's own script, nothing else
    assert html.escape(XSS) in body and html.escape(XSS_TITLE) in body
    # one table row per layer, input side first
    rows = re.findall(r'<tr><td class="num">(\d+)</td><td><code class="name">(.*?)</code>', body)
    assert [html.unescape(n) for _, n in rows] == mixed_run.layers


def test_chart_data_is_safe_json_with_the_runs_values(mixed_run, mixed_html):
    text = page(mixed_html)
    m = re.search(r'<script id="gw-flow-data" type="application/json">(.*?)</script>', text,
                  flags=re.S)
    assert m and "<" not in m.group(1) and ">" not in m.group(1)
    data = json.loads(m.group(1))
    assert data["layers"] == mixed_run.layers
    bp = data["stats"]["backprop_norm"]
    assert bp["steps"] == mixed_run.steps
    want = mixed_run.pivot("backprop_norm").loc[bp["steps"][-1], mixed_run.layers]
    assert bp["values"][-1] == [float(v) for v in want]


def test_script_json_cannot_close_the_script_element():
    out = script_json({"a": "</script><script>alert(1)</script><!--", "b": "é\u2028"})
    assert "<" not in out and ">" not in out and "&" not in out
    assert out.isascii()
    assert json.loads(out) == {"a": "</script><script>alert(1)</script><!--", "b": "é\u2028"}


def test_settings_and_model_repr_are_shown_escaped(mixed_run, mixed_html):
    text = page(mixed_html)
    assert f"<th>detail_every</th><td>{DETAIL_EVERY}</td>" in text
    assert html.escape(mixed_run.meta["model"]["repr"]) in text


def test_checkup_report_with_temporal_flow(rnn_checkup, tmp_path):
    out = write_html(rnn_checkup, tmp_path / "checkup.html")
    text = page(out)
    assert f">{rnn_checkup.verdict.upper()}</div>" in text
    assert "verdict source: checkup" in text
    assert "Temporal gradient flow" in text and text.count("data:image/svg+xml") == 2 * 7


def test_fix_report_section_on_a_run_with_few_stats(fix_report, bare_run, tmp_path):
    out = write_html(bare_run.path, tmp_path / "fix.html", fix_report=fix_report)
    text = page(out)
    assert "gw.fix: before and after" in text
    assert (f"verdict before: <b>{fix_report.verdict_before}</b> → after: "
            f"<b>{fix_report.verdict_after}</b>") in text
    for name, _ in fix_report.applied:
        assert f"<b>{html.escape(name)}</b>" in text
    # the run's six figures and the comparison, each in a wide and a phone layout
    assert text.count("data:image/svg+xml") == 2 * 7
    # the run holds backprop_norm only: the chart offers just that, the table has one column
    assert '<option value="backprop_norm">' in text and '"grad_norm"' not in text
    assert "<th title=" in text and text.count("<th title=") == 1
