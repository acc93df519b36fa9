"""The rich terminal summary: verdict, findings, one bar per layer, names printed literally."""

from __future__ import annotations

import numpy as np
from rich.console import Console

import gradwatch as gw
from gradwatch.report import print_summary
from gradwatch.report.names import shorten
from gradwatch.report.terminal import NAME_WIDTH

from .conftest import XSS


def render(obj):
    console = Console(record=True, width=140, color_system=None)
    verdict = print_summary(obj, console=console)
    return verdict, console.export_text()


def bar_lengths(text, layers):
    out = []
    for name in layers:
        line = next(ln for ln in text.splitlines() if f" {shorten(name, NAME_WIDTH)}" in ln
                    and "█" in ln)
        out.append(line.count("█"))
    return out


def test_run_summary_has_verdict_and_one_bar_per_layer_input_side_first(mixed_run):
    verdict, text = render(mixed_run)
    assert verdict == gw.diagnose.__globals__["verdict"](gw.diagnose(mixed_run))
    assert f"verdict: {verdict.upper()}" in text
    # one row per layer in order; bar length grows with log10(backprop_norm)
    # long names are shortened from the middle (both ends kept), never cut at the end
    positions = [text.index(f" {shorten(ly, NAME_WIDTH)}", text.index("gradient flow"))
                 for ly in mixed_run.layers]
    assert positions == sorted(positions)
    last = mixed_run.pivot("backprop_norm").iloc[-1][mixed_run.layers].to_numpy()
    bars = bar_lengths(text, mixed_run.layers)
    assert np.argsort(bars, kind="stable").tolist() == np.argsort(last, kind="stable").tolist()
    assert max(bars) == 30 and min(bars) == 1
    assert XSS in text  # a name is printed as is, not parsed as markup


def test_checkup_summary_lists_findings_and_remedies():
    torch = __import__("torch")
    nn = torch.nn
    torch.manual_seed(0)
    layers = []
    for _ in range(10):
        layers += [nn.Linear(16, 16), nn.Sigmoid()]
    cu = gw.check(nn.Sequential(*layers, nn.Linear(16, 2)), torch.randn(16, 16))
    assert cu.verdict == "vanishing"
    verdict, text = render(cu)
    assert verdict == "vanishing" and "verdict: VANISHING" in text
    for f in cu.findings:
        assert f.kind in text
        for r in f.remedies:
            assert r in text


def test_checkup_summary_shows_temporal_flow_of_recurrent_layers(rnn_checkup):
    _, text = render(rnn_checkup)
    first = rnn_checkup.temporal.sort_values("t")["ratio"].iloc[0]
    assert "temporal gradient flow" in text
    assert f"rnn: {first:.3g} over {len(rnn_checkup.temporal)} time steps" in text
