"""NaN origins from the watch path's new statistics, and GradScaler skips (synthetic runs)."""

from __future__ import annotations

import numpy as np

from gradwatch.diagnose import diagnose, verdict
from gradwatch.diagnose.nonfinite import SKIP_RUN
from tests.diagnose.synthetic import const, make_run

NAN = float("nan")


def nonfinite(run):
    return [f for f in diagnose(run) if f.kind == "nonfinite"]


def base(n_steps=10, n_layers=4):
    return {
        "grad_norm": const(1.0, n_layers, n_steps),
        "backprop_norm": const(1.0, n_layers, n_steps),
    }


def test_nan_in_the_input_between_detail_steps_is_blamed_on_the_input():
    stats = base()
    stats["grad_norm"][7:] = np.nan  # unrecorded; the NaN rows come below
    extra = [(7, "", "input_nonfinite", 3.0)] + [(7, f"l{i}", "grad_norm", NAN) for i in range(4)]
    (f,) = nonfinite(make_run(4, stats, extra=extra, loss=[1.0] * 7 + [NAN] * 3))
    assert f.evidence["origin"] == "input" and f.evidence["first_step"] == 7
    assert f.layers == () and f.remedies == ("check_inputs",)


def test_nan_weight_is_blamed_on_the_weight_before_the_forward_output():
    extra = [
        (4, "l2", "weight_nonfinite", 5.0),
        (4, "l2", "forward_nonfinite", 8.0),
        (4, "l3", "forward_nonfinite", 8.0),
    ]
    (f,) = nonfinite(make_run(4, base(), extra=extra))
    assert (f.evidence["origin"], f.evidence["origin_layer"], f.steps) == ("weights", "l2", (4, 4))


def test_nan_forward_output_names_the_first_layer_in_execution_order():
    extra = [(5, "l1", "forward_nonfinite", 2.0), (5, "l3", "forward_nonfinite", 16.0)]
    (f,) = nonfinite(make_run(4, base(), extra=extra, loss=[1.0] * 5 + [NAN] * 5))
    assert (f.evidence["origin"], f.evidence["origin_layer"]) == ("forward", "l1")
    assert "layer 2 of 4" in f.message


def test_nan_in_the_backward_pass_names_where_it_arrives():
    extra = [(3, "l2", "nonfinite", 4.0), (3, "l1", "nonfinite", 9.0)]
    extra.append((3, "l1", "backprop_norm", NAN))
    (f,) = nonfinite(make_run(4, base(), extra=extra))
    assert (f.evidence["origin"], f.evidence["origin_layer"]) == ("backward", "l2")
    assert "its weight gradient is the first NaN/Inf" in f.message


def scaler_run(skipped_steps, n_steps=40, recorded_stat=True):
    stats = base(n_steps)
    for s in skipped_steps:  # the watch path records no gradient statistics on a skip
        stats["grad_norm"][s] = np.nan
        stats["backprop_norm"][s] = np.nan
    extra = []
    if recorded_stat:
        extra = [(s, "", "skipped", float(s in skipped_steps)) for s in range(n_steps)]
        extra += [(s, "", "loss_scale", 2.0 ** (16 - min(s, 16))) for s in range(n_steps)]
    else:  # an older Monitor: the skipped steps' gradients are recorded as Inf
        extra = [(s, f"l{i}", "grad_norm", float("inf")) for s in skipped_steps for i in range(4)]
    run = make_run(4, stats, extra=extra, loss=[2.0] * n_steps)
    run.meta["settings"] = {"scaler": "GradScaler"}
    return run


def test_routine_scaler_skips_are_not_findings():
    for recorded in (True, False):
        run = scaler_run([0, 1, 2, 3, 25], recorded_stat=recorded)
        assert nonfinite(run) == [] and verdict(diagnose(run)) == "healthy"


def test_skips_that_persist_are_nonfinite():
    run = scaler_run(list(range(10, 10 + SKIP_RUN)))
    (f,) = nonfinite(run)
    assert f.evidence["origin"] == "scaler" and f.evidence["longest_run"] == SKIP_RUN
    assert f.steps == (10, 10 + SKIP_RUN - 1) and "loss scale down to" in f.message
    assert nonfinite(scaler_run(list(range(10, 10 + SKIP_RUN - 1)))) == []


def test_a_nan_weight_on_a_skipped_step_is_still_reported():
    run = scaler_run([0, 1])
    run.stats.loc[len(run.stats)] = (1, "l0", "weight_nonfinite", 3.0)
    (f,) = nonfinite(run)
    assert (f.evidence["origin"], f.evidence["first_step"]) == ("weights", 1)
