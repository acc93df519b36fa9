"""gw.theory.predict through time for nn.RNN: closed forms, Monte Carlo, gw.check, and the
models it leaves uncertain."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import gradwatch as gw
from gradwatch.errors import GradwatchValueError

ROOT = str(Path(__file__).resolve().parents[2])
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from benchmarks.theory_mc import BY_NAME, check_config  # noqa: E402
from benchmarks.theory_mc.rnn import SequenceClassifier  # noqa: E402


def _classifier(seed=0, **kw):
    torch.manual_seed(seed)
    return SequenceClassifier(nn.RNN, 32, 128, **kw)


def test_relu_rnn_read_at_the_last_step_decays_by_the_closed_form_per_step():
    # ReLU: ∫Dz relu'(√q z)² = 1/2 at every q, so ‖∂L/∂x_t‖² = (σ²_hh/2)^(T−1−t) exactly
    model = _classifier(nonlinearity="relu")
    w = model.rnn.weight_hh_l0.detach().double()
    chi = w.shape[1] * float(w.pow(2).mean()) / 2
    pred = gw.theory.predict(model, inputs=torch.randn(8, 12, 32))
    assert pred.method == "time" and pred.depth == 12 and len(pred.table) == 12
    expected = chi ** np.arange(11, -1, -1)
    np.testing.assert_allclose(pred.table["attenuation"].to_numpy(), expected, rtol=1e-9)
    assert pred.gradient_ratio == pytest.approx(chi**11, rel=1e-9)
    assert pred.phase == "ordered" and pred.verdict == "vanishing"
    assert pred.trainable_depth == pytest.approx(-1 / math.log(chi), rel=1e-9)


def test_the_monte_carlo_check_passes_on_a_tanh_rnn():
    result = check_config(BY_NAME["rnn_tanh_20"], seeds=3)
    assert result["verdict"] == "vanishing"
    assert result["n_layers"] == 20 and all(r["ok"] for r in result["layers"]), result["layers"]
    first = result["layers"][0]
    assert first["measured"] < -9  # 20 steps of χ* ≈ 0.28: ten decades of ‖∂L/∂x_t‖²


def test_the_prediction_agrees_with_what_gw_check_measures_through_time():
    x = torch.randn(16, 20, 32, generator=torch.Generator().manual_seed(1))
    last = _classifier(seed=3)
    every = _classifier(seed=3, read="all")
    for model in (last, every):
        pred = gw.theory.predict(model, inputs=x)
        cu = gw.check(model, x)
        measured = cu.run.meta["checkup"]["temporal"]["rnn"]["first_over_last"]
        assert abs(math.log10(pred.norm_ratio) - math.log10(measured)) < 0.5
        assert pred.verdict == cu.verdict
    assert gw.theory.predict(last, inputs=x).verdict == "vanishing"
    assert gw.theory.predict(every, inputs=x).verdict == "healthy"


def test_a_bare_rnn_is_predicted_from_a_probe_of_the_given_length():
    torch.manual_seed(0)
    rnn = nn.RNN(16, 64, num_layers=2)
    pred = gw.theory.predict(rnn, steps=30)
    assert pred.method == "time" and len(pred.table) == 60
    assert set(pred.table["rnn_layer"]) == {0, 1}
    assert pred.verdict == "healthy"  # its output is read at every step
    short = gw.theory.predict(nn.RNN(16, 64), steps=3)
    assert short.verdict == "healthy" and short.depth == 3


def test_outside_the_validated_region_the_verdict_is_uncertain_with_the_reason():
    x = torch.randn(8, 20, 32)
    edge = _classifier(sigma_hh2=1.0)
    pred = gw.theory.predict(edge, inputs=x)
    assert pred.verdict == "uncertain" and "edge of chaos" in pred.reason
    assert len(pred.table) == 20  # the recursion's table is still there
    narrow = gw.theory.predict(SequenceClassifier(nn.RNN, 32, 16), inputs=x)
    assert narrow.verdict == "uncertain" and "16 hidden units" in narrow.reason
    deep = gw.theory.predict(nn.GRU(8, 64, num_layers=2), steps=10)
    assert deep.verdict == "uncertain" and "one layer" in deep.reason
    long = gw.theory.predict(nn.LSTM(8, 64), steps=300)
    assert long.verdict == "uncertain" and "at most 256 steps" in long.reason
    two = nn.ModuleList([nn.RNN(4, 64), nn.RNN(64, 64)])
    assert "2 recurrent modules" in gw.theory.predict(two, steps=10).reason
    cell = gw.theory.predict(nn.RNNCell(8, 64), steps=10)
    assert cell.verdict == "uncertain" and "loop" in cell.reason
    bi = gw.theory.predict(nn.RNN(8, 64, bidirectional=True), steps=10)
    assert bi.verdict == "uncertain" and "bidirectional" in bi.reason


def test_a_recurrent_model_without_steps_or_inputs_says_what_to_pass():
    pred = gw.theory.predict(nn.RNN(8, 64))
    assert pred.verdict == "uncertain" and "steps=" in pred.reason
    with pytest.raises(GradwatchValueError, match="steps"):
        gw.theory.predict(nn.RNN(8, 64), steps=1)


def _cli(capsys, *args: str) -> tuple[int, str, str]:
    from gradwatch.cli import main as cli_main

    code = cli_main(["theory", *args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_the_cli_predicts_an_rnn_from_settings(capsys):
    code, stdout, _ = _cli(capsys, "--rnn", "relu", "--steps", "12", "--layers", "2", "--json")
    assert code == 0
    out = json.loads(stdout)
    assert out["settings"]["layers"] == 2 and out["prediction"]["method"] == "time"
    rows = out["prediction"]["layers"]
    assert len(rows) == 24 and rows[11]["attenuation"] == 1.0
    chi = rows[12]["sigma_w2"] / 2  # ReLU: the top layer decays by σ²_hh/2 per step
    top = [r["attenuation"] for r in rows[12:]]
    np.testing.assert_allclose(top, chi ** np.arange(11, -1, -1), rtol=1e-9)
    assert out["prediction"]["verdict"] == "vanishing"
    code, stdout, _ = _cli(capsys, "--rnn", "tanh", "--steps", "30", "--read", "every")
    assert code == 0 and stdout.startswith("tanh") and "healthy" in stdout
    code, stdout, _ = _cli(capsys, "--rnn", "gru", "--steps", "12", "--json")
    assert code == 0 and json.loads(stdout)["prediction"]["layers"][0]["type"] == "GRU"
    code, stdout, _ = _cli(capsys, "--rnn", "tanh", "--steps", "30", "--sigma-w2", "1")
    assert code == 0 and "uncertain" in stdout and "edge of chaos" in stdout


@pytest.mark.parametrize(
    "args, needle",
    [
        (("--rnn", "tanh"), "--steps"),
        (("--rnn", "tanh", "--steps", "1"), "--steps"),
        (("--rnn", "tanh", "--steps", "9", "--blocks", "3"), "--blocks"),
        (("--rnn", "tanh", "--steps", "9", "--sigma-w2", "-1"), "--sigma-w2"),
        (("--rnn", "tanh", "--steps", "9", "--layers", "0"), "--layers"),
        (("--activation", "tanh", "--sigma-w2", "1", "--steps", "9"), "--rnn"),
    ],
)
def test_bad_rnn_settings_are_one_line_and_exit_code_two(capsys, args, needle):
    code, stdout, err = _cli(capsys, *args)
    assert code == 2 and not stdout and needle in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("cell", [nn.LSTM, nn.GRU])
def test_gated_layers_match_gw_check_and_keep_the_gated_threshold(cell):
    # gw.check measures the same quantity on the same model: one seed, within 0.3 decade
    x = torch.randn(16, 20, 32, generator=torch.Generator().manual_seed(2))
    torch.manual_seed(4)
    model = SequenceClassifier(cell, 32, 128)
    pred = gw.theory.predict(model, inputs=x)
    measured = gw.check(model, x).run.meta["checkup"]["temporal"]["rnn"]["first_over_last"]
    assert abs(math.log10(pred.norm_ratio) - math.log10(measured)) < 0.3
    assert 1e-6 < pred.norm_ratio < 1e-3  # ~8 decades of ‖∂L/∂x_t‖² over 20 steps
    assert pred.verdict == "healthy" and "learnt open" in pred.summary()
    assert pred.phase == "ordered" and 0.3 < pred.table["chi1"].iloc[:10].mean() < 0.5


def test_the_monte_carlo_check_passes_on_a_gru_where_untied_weights_miss():
    from gradwatch.theory import recurrent, rnn_gated

    config = BY_NAME["gru_20"]
    result = check_config(config, seeds=3)
    assert all(r["ok"] for r in result["layers"]), result["layers"]
    # a fresh W_hh per step (gradient independence) loses 2 decades more over 20 steps
    torch.manual_seed(1000)
    rnn = config.build().rnn
    x = config.batch()[0].transpose(0, 1).double().reshape(20, -1)
    layer = recurrent._gated_layer(rnn)
    rec = rnn_gated.forward(layer, (x @ x.T / x.shape[1]).numpy(), 0.0)
    untied = rnn_gated.backward(layer, rec, np.eye(20)[-1], tied=False)
    measured = result["layers"][0]["measured"]
    assert math.log10(untied[0] / untied[-1]) < measured - 1.5
