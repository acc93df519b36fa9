"""Each figure: right panels and lines, the run's own numbers, log scales, missing stats."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure

from gradwatch.report import figures as F
from gradwatch.report.figures.update_ratio import GUIDE

from .conftest import DETAIL_EVERY, STEPS


def texts(fig):
    return " ".join(t.get_text() for ax in fig.axes for t in ax.texts)


def data_lines(ax):
    """Lines that carry data (not the horizontal guide lines)."""
    return [ln for ln in ax.lines if not str(ln.get_label()).startswith(("1e-3", "_"))]


def test_gradient_flow_default_draws_first_middle_last_step(mixed_run):
    fig = F.gradient_flow(mixed_run)
    assert isinstance(fig, Figure)
    (ax,) = fig.axes
    assert ax.get_yscale() == "log"
    lines = data_lines(ax)
    assert [ln.get_label() for ln in lines] == ["step 0", f"step {(STEPS - 1) // 2}",
                                               f"step {STEPS - 1}"]
    # input side on the left: x tick labels follow run.layers; y data are the run's values
    labels = [t.get_text() for t in ax.get_xticklabels()]
    assert labels[0] == mixed_run.layers[0] == "body.0.0"
    last = mixed_run.pivot("backprop_norm").loc[STEPS - 1, mixed_run.layers].to_numpy()
    np.testing.assert_allclose(lines[-1].get_ydata(), last, rtol=1e-12)
    np.testing.assert_array_equal(lines[-1].get_xdata(), np.arange(len(mixed_run.layers)))


def test_gradient_flow_two_stats_and_nearest_steps(mixed_run):
    fig = F.gradient_flow(mixed_run, steps=[1, 1000], stat=("backprop_norm", "grad_norm"))
    assert len(fig.axes) == 2
    for ax in fig.axes:
        assert ax.get_yscale() == "log"
        assert [ln.get_label() for ln in data_lines(ax)] == ["step 1", f"step {STEPS - 1}"]
    grad = mixed_run.pivot("grad_norm").loc[1, mixed_run.layers].to_numpy()
    np.testing.assert_allclose(data_lines(fig.axes[1])[0].get_ydata(), grad, rtol=1e-12)


def test_gradient_flow_marks_nonfinite_values(mixed_run):
    run = type(mixed_run)(meta=mixed_run.meta, stats=mixed_run.stats.copy(), path=None)
    s = run.stats
    hit = (s["step"] == STEPS - 1) & (s["stat"] == "backprop_norm") & (s["layer"] == "body.0.0")
    s.loc[hit, "value"] = np.inf
    fig = F.gradient_flow(run)
    assert "non-finite" in texts(fig)
    ax = fig.axes[0]
    crosses = [ln for ln in ax.lines if ln.get_marker() == "x"]
    assert len(crosses) == 1 and list(crosses[0].get_xdata()) == [0]


def test_heatmap_is_log_coloured_with_input_side_at_the_bottom(mixed_run):
    for stat in ("backprop_norm", "grad_norm"):
        fig = F.heatmap(mixed_run, stat)
        assert len(fig.axes) == 2  # heatmap + colour bar
        ax = fig.axes[0]
        (mesh,) = ax.collections
        assert isinstance(mesh.norm, LogNorm)
        table = mixed_run.pivot(stat)[mixed_run.layers]
        grid = np.asarray(mesh.get_array()).reshape(len(mixed_run.layers), STEPS)
        # row 0 (drawn at the lowest y) is the input-side layer
        np.testing.assert_allclose(grid, table.to_numpy().T, rtol=1e-12)
        assert ax.get_ylim()[0] < ax.get_ylim()[1]
        assert [t.get_text() for t in ax.get_yticklabels()][0] == mixed_run.layers[0]


def test_activations_one_line_per_activation_layer(mixed_run):
    fig = F.activations(mixed_run)
    sat_ax, dead_ax = fig.axes
    sat = mixed_run.pivot("saturated_frac")
    dead = mixed_run.pivot("dead_frac")
    assert len(sat_ax.lines) == sat.shape[1] == 3  # tanh after body.0, body.2, body.4
    assert len(dead_ax.lines) == dead.shape[1] == 2  # ReLU after body.1, body.3
    assert list(sat_ax.lines[0].get_xdata()) == list(range(0, STEPS, DETAIL_EVERY))
    np.testing.assert_allclose(dead_ax.lines[1].get_ydata(), dead.iloc[:, 1].to_numpy())
    for ax in (sat_ax, dead_ax):
        assert ax.get_ylim() == pytest.approx((-0.02, 1.02))


def test_update_ratio_has_guide_line_and_log_axes(mixed_run):
    fig = F.update_ratio(mixed_run)
    left, right = fig.axes
    assert left.get_yscale() == right.get_yscale() == "log"
    n = len(mixed_run.layers)
    assert len(data_lines(left)) == 3 and len(data_lines(right)) == n
    for ax in (left, right):
        guides = [ln for ln in ax.lines if str(ln.get_label()).startswith("1e-3")]
        assert len(guides) == 1 and set(guides[0].get_ydata()) == {GUIDE}
    ratio = mixed_run.pivot("update_ratio")[mixed_run.layers]
    np.testing.assert_allclose(data_lines(right)[0].get_ydata(), ratio.iloc[:, 0].to_numpy())


def test_loss_curve_is_the_runs_loss(mixed_run):
    fig = F.loss(mixed_run)
    (ax,) = fig.axes
    (line,) = ax.lines
    loss = mixed_run.loss()
    assert len(loss) == STEPS
    np.testing.assert_allclose(line.get_ydata(), loss.to_numpy())
    np.testing.assert_array_equal(line.get_xdata(), loss.index.to_numpy())


@pytest.mark.parametrize(
    "make, missing",
    [
        (lambda r: F.gradient_flow(r, stat="grad_norm"), "grad_norm"),
        (lambda r: F.heatmap(r, "grad_norm"), "grad_norm"),
        (F.activations, "saturated_frac"),
        (F.update_ratio, "update_ratio"),
        (F.loss, "loss"),
    ],
)
def test_figures_say_not_recorded_instead_of_failing(bare_run, make, missing):
    fig = make(bare_run)
    assert isinstance(fig, Figure)
    assert f"{missing}: not recorded" in texts(fig)
    assert not any(ax.lines for ax in fig.axes)


def test_a_run_directory_path_works_too(bare_run):
    fig = F.gradient_flow(bare_run.path)
    assert len(data_lines(fig.axes[0])) == 3  # 3 recorded steps: first, middle, last


def test_fix_comparison_before_and_after(fix_report):
    fig = F.fix_comparison(fix_report)
    (ax,) = fig.axes
    assert ax.get_yscale() == "log"
    before, after = ax.lines
    np.testing.assert_allclose(before.get_ydata(), fix_report.before.table["backprop_norm"])
    np.testing.assert_allclose(after.get_ydata(), fix_report.after.table["backprop_norm"])
    assert fix_report.verdict_before in before.get_label()
    assert fix_report.verdict_after in after.get_label()


def test_temporal_flow_of_a_recurrent_net(rnn_checkup):
    fig = F.temporal(rnn_checkup)
    (ax,) = fig.axes
    assert ax.get_yscale() == "log"
    curves = [ln for ln in ax.lines if ln.get_label() == "rnn"]
    assert len(curves) == 1
    tdf = rnn_checkup.temporal
    np.testing.assert_allclose(curves[0].get_ydata(), tdf["ratio"].to_numpy())
    assert curves[0].get_ydata()[-1] == pytest.approx(1.0)
    # the DataFrame itself, and no recurrent layer at all
    assert len(F.temporal(tdf).axes[0].lines) == 2
    for empty in (None, pd.DataFrame(columns=["layer", "t", "grad_norm", "ratio"])):
        assert "no temporal gradient flow" in texts(F.temporal(empty))


def test_no_pyplot_state_leaks(mixed_run, rnn_checkup, fix_report):
    before = plt.get_fignums()
    F.run_figures(mixed_run)
    F.temporal(rnn_checkup)
    F.fix_comparison(fix_report)
    assert plt.get_fignums() == before


def test_gradient_flow_panels_draw_the_same_steps_the_title_names(tmp_path):
    """grad_norm is recorded every step, backprop_norm every 10th: both panels (and their
    legends) show the steps both were recorded at, never 0/12/24 beside 0/10/20."""
    import torch
    from torch import nn

    from .conftest import record

    torch.manual_seed(0)
    run = record(tmp_path / "detail", nn.Sequential(nn.Linear(16, 16), nn.Tanh(),
                                                    nn.Linear(16, 3)), steps=25, detail_every=10)
    assert run.pivot("grad_norm").index.tolist() == list(range(25))
    assert run.pivot("backprop_norm").index.tolist() == [0, 10, 20]
    fig = F.gradient_flow(run, stat=("backprop_norm", "grad_norm"))
    legends = [[t.get_text() for t in ax.get_legend().get_texts()] for ax in fig.axes]
    assert legends == [["step 0", "step 10", "step 20"]] * 2
    assert fig._suptitle.get_text() == "Gradient flow by layer at steps 0, 10 and 20"
    # one statistic alone: its own first, middle and last steps
    fig = F.gradient_flow(run, stat="grad_norm")
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == [
        "step 0", "step 12", "step 24"]
