"""The demo-style report tells the whole story on one page, in finished text."""

from __future__ import annotations

import base64
import re
from html import escape as html_escape

import pytest

from gradwatch.report._html_parts import rst_html
from gradwatch.report.figures._common import narrow_layout, new_figure
from gradwatch.report.names import shorten
from gradwatch.report.remedy_text import describe_remedy, layer_list, why_remedy


def text_of(path):
    return path.read_text(encoding="utf-8")


def test_comparison_section_shows_both_runs_loss_and_accuracy_curves(compare_html):
    html = text_of(compare_html)
    section = html[html.index("Both training runs, side by side"):]
    section = section[:section.index("</section>")]
    assert "accuracy" in section.lower() and "loss" in section.lower()
    assert section.count("data:image/svg+xml") == 4  # two figures, two layouts each
    # the accuracy figure's legend names each run with its final accuracy
    figs = re.findall(r'src="data:image/svg\+xml;base64,([^"]+)"', section)
    svg = base64.b64decode(figs[0]).decode("utf-8")
    assert "held-out accuracy" in svg and "original: 33.0%" in svg and "fixed: 90.0%" in svg


def test_fix_section_says_what_changed_and_why(compare_html, fix_report):
    html = text_of(compare_html)
    assert fix_report.applied, "the fixture's gw.fix applied nothing"
    for name, details in fix_report.applied:
        assert html_escape(describe_remedy(name, details)) in html
        assert f"why: {html_escape(why_remedy(details))}" in html


def test_no_docstring_markup_is_shown(compare_html, mixed_html):
    for path in (compare_html, mixed_html):
        html = text_of(path)
        assert "``" not in html and ":func:" not in html
        assert "<code>report.before.table</code>" in html or path == mixed_html


def test_saturation_panel_explains_a_near_zero_fraction(compare_html):
    html = text_of(compare_html)
    note = re.search(r'<p class="help" id="gw-saturation-note">(.*?)</p>', html, flags=re.S)
    assert note, "the sigmoid run's saturation figure has no explanation"
    assert "near 0.5" in note.group(1) and "Glorot &amp; Bengio 2010" in note.group(1)


def test_rst_html_renders_markup_and_escapes_the_rest():
    assert rst_html("see ``a<b`` and **this** and :func:`gw.fix`") == (
        "see <code>a&lt;b</code> and <b>this</b> and <code>gw.fix</code>"
    )


def test_remedy_text_is_whole():
    details = {"kind": "init", "scheme": "lsuv",
               "layers": {str(i): {"std": 0.2} for i in range(0, 34, 2)},
               "verdict": "vanishing", "backprop_spread": 6.39}
    text = describe_remedy("lsuv_init_", details)
    assert text == ("LSUV init of 17 layers ('0', '2' … '32'), each output scaled to unit "
                    "variance on the batch; check after it: vanishing (backprop_norm spread "
                    "6.4 decades over the layers)")
    assert layer_list(["a", "b"]) == "layers 'a', 'b'"
    swap = describe_remedy("swap_activation", {"kind": "activation",
                                               "swaps": {"Sigmoid": "relu"}, "reinit": "he",
                                               "replaced": ["1", "3"]})
    assert swap == "swapped Sigmoid → relu in layers '1', '3', with He re-init of the layers " \
                   "feeding them"
    assert "Mishkin" in why_remedy(details) and "1/4" in why_remedy({"kind": "activation"})


@pytest.mark.parametrize(("name", "width", "want"), [
    ("layer1.0.conv1", 24, "layer1.0.conv1"),
    ("encoder.layers.10.self_attn.q_proj", 24, "encoder.lay…_attn.q_proj"),
])
def test_long_names_are_shortened_from_the_middle(name, width, want):
    got = shorten(name, width)
    assert got == want and len(got) <= width


def test_narrow_layout_stacks_panels_at_phone_width():
    fig, axes = new_figure(1, 2, size=(12.0, 4.2))
    assert fig.get_size_inches()[0] == 12.0 and len(axes) == 2
    with narrow_layout():
        fig, axes = new_figure(1, 2, size=(12.0, 4.2))
    width, height = fig.get_size_inches()
    assert width < 4.5 and height > width  # one column: the panels are stacked
    top, bottom = (ax.get_position() for ax in axes)
    assert top.y0 > bottom.y1 - 1e-6
