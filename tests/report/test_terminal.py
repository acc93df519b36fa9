"""The rich terminal summary: verdict, findings, one bar per layer, names printed literally."""

from __future__ import annotations

import numpy as np
from rich.console import Console

import gradwatch as gw
from gradwatch.report import print_summary
from gradwatch.report.terminal import BAR_WIDTH, DECADE_CELLS, NAME_WIDTH, bar_cells
from gradwatch.wording import fold

from .conftest import XSS


def render(obj):
    console = Console(record=True, width=140, color_system=None)
    verdict = print_summary(obj, console=console)
    return verdict, console.export_text()


def bar_lengths(text, layers):
    out = []
    for name in layers:
        line = next(ln for ln in text.splitlines()
                    if f" {fold(name, NAME_WIDTH).splitlines()[0]}" in ln and "█" in ln)
        out.append(line.count("█"))
    return out


def test_run_summary_has_verdict_and_one_bar_per_layer_input_side_first(mixed_run):
    verdict, text = render(mixed_run)
    assert verdict == gw.diagnose.__globals__["verdict"](gw.diagnose(mixed_run))
    assert f"verdict: {verdict.upper()}" in text
    # one row per layer in order; bar length grows with log10(backprop_norm)
    # long names go on to the next line after a ".", never cut inside a word
    positions = [text.index(f" {fold(ly, NAME_WIDTH).splitlines()[0]}", text.index("gradient flow"))
                 for ly in mixed_run.layers]
    assert positions == sorted(positions)
    last = mixed_run.pivot("backprop_norm").iloc[-1][mixed_run.layers].to_numpy()
    bars = bar_lengths(text, mixed_run.layers)
    # a log scale with a fixed step: the largest fills the bar, 2 cells less per decade
    assert bars == [bar_cells(v, last.max()) for v in last]
    assert max(bars) == BAR_WIDTH
    for v, n in zip(last, bars, strict=True):
        assert n == max(1, BAR_WIDTH - round(DECADE_CELLS * np.log10(last.max() / v)))
    assert XSS in text  # a name is printed as is, not parsed as markup


def chain(depth, width, act, out):
    """``depth`` blocks of [Linear(width, width), act()], then Linear(width, out)."""
    nn = __import__("torch").nn
    __import__("torch").manual_seed(0)
    layers = []
    for _ in range(depth):
        layers += [nn.Linear(width, width), act()]
    return nn.Sequential(*layers, nn.Linear(width, out))


def test_checkup_summary_lists_findings_and_remedies():
    torch = __import__("torch")
    cu = gw.check(chain(10, 16, torch.nn.Sigmoid, 2), torch.randn(16, 16))
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


def test_bars_have_a_fixed_scale_so_a_healthy_net_does_not_look_vanished():
    assert bar_cells(1.0, 1.0) == BAR_WIDTH
    assert bar_cells(0.1, 1.0) == BAR_WIDTH - DECADE_CELLS       # one decade below
    assert bar_cells(0.5, 1.0) == BAR_WIDTH - 1                  # a factor 2: 0.3 decades
    assert bar_cells(1e-20, 1.0) == 1                            # never less than one cell
    # a healthy ReLU net with He init: every layer within a decade, every bar nearly full
    torch = __import__("torch")
    nn = torch.nn
    model = chain(8, 64, nn.ReLU, 10)
    for m in model:
        if isinstance(m, nn.Linear):
            nn.init.kaiming_normal_(m.weight)
            nn.init.zeros_(m.bias)
    cu = gw.check(model, torch.randn(128, 64), torch.randint(0, 10, (128,)))
    assert cu.verdict == "healthy"
    _, text = render(cu)
    bars = bar_lengths(text, list(cu.table["layer"]))
    assert min(bars) >= BAR_WIDTH - 2 * DECADE_CELLS, bars  # the output layer too


class Encoder(__import__("torch").nn.Module):
    """A real nn.TransformerEncoder under a long attribute name: long dotted layer names."""

    def __init__(self):
        nn = __import__("torch").nn
        super().__init__()
        layer = nn.TransformerEncoderLayer(16, 2, dim_feedforward=32, batch_first=True)
        self.text_encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.classifier_head = nn.Linear(16, 3)

    def forward(self, x):
        return self.classifier_head(self.text_encoder(x).mean(1))


def first_cells(text):
    """The first column of a rich table, row by row: (first line, continuation lines)."""
    rows = []
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("│┃").split("│")]
        if len(cells) < 3 or not cells[0] or set(cells[0]) <= set("━─┃"):
            continue
        if any(cells[1:]) or not rows:
            rows.append([cells[0]])
        else:
            rows[-1].append(cells[0])
    return rows


def test_80_columns_never_split_a_layer_name_inside_a_word():
    """``layer1.0.co│nv1`` no more: a long name goes on to the next line after a "."."""
    from gradwatch.commands.check import print_checkup

    torch = __import__("torch")
    torch.manual_seed(0)
    cu = gw.check(Encoder(), torch.randn(4, 6, 16))
    names = list(cu.table["layer"])
    assert max(len(n) for n in names) > 30
    console = Console(record=True, width=80, color_system=None)
    print_checkup(cu, console)
    text = console.export_text()
    assert max(len(line) for line in text.splitlines()) <= 80
    rows = [r for r in first_cells(text) if r[0] not in ("layer", "…")]
    assert ["".join(r) for r in rows] == names           # whole names, in order
    folded = [r for r in rows if len(r) > 1]
    assert folded                                        # some did not fit on one line
    for parts in folded:
        assert all(p.endswith(".") for p in parts[:-1]), parts   # broken after a "." only
    # the summary's gradient-flow table, in a panel 80 columns wide
    _, text = render_at(cu, 80)
    assert max(len(line) for line in text.splitlines()) <= 80
    flow = text[text.index("gradient flow"):]
    for name in cu.table.loc[cu.table["backprop_norm"].notna(), "layer"]:
        parts = [p + "." for p in name.split(".")[:-1]] + [name.split(".")[-1]]
        assert all(p in flow for p in parts), name   # every part whole
    assert "text_encoder.layers.0." in flow  # folded after a ".", at the panel's width


def render_at(obj, width):
    console = Console(record=True, width=width, color_system=None)
    verdict = print_summary(obj, console=console)
    return verdict, console.export_text()


def test_fold_breaks_after_separators_only():
    assert fold("layer1.0.conv1", 40) == "layer1.0.conv1"
    assert fold("layer1.0.conv1", 11) == "layer1.0.\nconv1"
    assert fold("runs/demo/after", 11) == "runs/demo/\nafter"
    assert fold("encoder.layers.10.self_attn.q_proj", 12) == (
        "encoder.\nlayers.10.\nself_attn.\nq_proj")
    assert fold("x" * 30, 10) == "xxxx…xxxxx"       # one part too long: shortened, not split
    assert fold("", 10) == "(root)"
