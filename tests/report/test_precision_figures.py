"""The low-precision figures: drawn from the recorded ranges, and in the report of a run
watched for a format (and only there)."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

import gradwatch as gw
from gradwatch.report import write_html
from gradwatch.report.figures import headroom, underflow


def _run(tmp_path, precision):
    torch.manual_seed(0)
    layers = []
    for _ in range(6):
        lin = nn.Linear(16, 16)
        nn.init.normal_(lin.weight, 0.0, math.sqrt(1 / 16))
        layers += [lin, nn.Sigmoid()]
    model = nn.Sequential(*layers, nn.Linear(16, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(32, 16), torch.randint(0, 3, (32,))
    extra = {"precision": precision} if precision else {}
    with gw.watch(model, tmp_path / f"run-{precision}", optimizer=opt, detail_every=2,
                  diagnose=False, **extra) as mon:
        for _ in range(6):
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            mon.step(loss)
    return gw.load(mon.run_dir)


def test_headroom_bars_are_the_recorded_log2_range(tmp_path):
    run = _run(tmp_path, "e4m3")
    fig = headroom(run)
    left = fig.axes[0]
    bars = left.patches
    hi, lo = run.pivot("grad_log2_max"), run.pivot("grad_log2_min")
    last = hi.index[-1]
    assert len(bars) == len(hi.columns)
    for bar, layer in zip(bars, hi.columns, strict=True):  # input side first
        assert bar.get_x() == np.float32(lo.loc[last, layer]) or math.isclose(
            bar.get_x(), lo.loc[last, layer], rel_tol=1e-6)
        assert math.isclose(bar.get_x() + bar.get_width(), hi.loc[last, layer], rel_tol=1e-6)
    assert "e4m3" in left.get_title()
    lines = underflow(run).axes[0].lines
    assert lines and max(np.nanmax(ln.get_ydata()) for ln in lines) <= 1.0


def test_report_has_the_panels_only_for_a_run_watched_for_a_format(tmp_path):
    page = write_html(_run(tmp_path, "fp16"), tmp_path / "lp.html").read_text()
    assert "Headroom: gradient range against the formats" in page
    assert "Entries flushed to zero" in page
    plain = write_html(_run(tmp_path, None), tmp_path / "plain.html").read_text()
    assert "Headroom" not in plain
