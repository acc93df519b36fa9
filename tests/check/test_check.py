"""gw.check: verdicts on the classic initialisations, the table against brute-force autograd,
the model left untouched, temporal gradient flow, and errors."""

from __future__ import annotations

import copy
import json
import math
from functools import partial

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import gradwatch as gw
from gradwatch.check import STAT_COLUMNS
from tests.check.nets import (
    LastStep,
    SqrtLayer,
    gaussian,
    he_normal,
    mlp,
    standard,
    xavier_normal,
)


def kinds(cu):
    return {f.kind for f in cu.findings}


def finding(cu, kind):
    (f,) = [f for f in cu.findings if f.kind == kind]
    return f


def chi1_tanh(sigma_w2: float) -> float:
    """Mean-field chi1 of tanh (sigma_b = 0) by Gauss-Hermite quadrature, independently of
    gradwatch.theory: q* from the length map, then chi1 = sigma_w2 E[tanh'(sqrt(q*) z)^2]."""
    z, w = np.polynomial.hermite_e.hermegauss(121)
    w = w / w.sum()
    q = 1.0
    for _ in range(1000):
        q = sigma_w2 * np.sum(w * np.tanh(np.sqrt(q) * z) ** 2)
    return float(sigma_w2 * np.sum(w / np.cosh(np.sqrt(q) * z) ** 4))


# ------------------------------------------------------------------------------ verdicts
def test_relu_30_layers_xavier_vanishes():
    # He et al. 2015: under ReLU, Xavier's variance is half of He's per layer, so the
    # back-propagated norm shrinks by 1/sqrt(2) per layer: 2^-14.5 ~ 4e-5 over 30 layers.
    torch.manual_seed(0)
    model = mlp(30, 64, nn.ReLU, xavier_normal)
    cu = gw.check(model, torch.randn(32, 64))
    assert cu.verdict == "vanishing"
    f = finding(cu, "vanishing")
    assert f.severity == "error"
    assert f.evidence["backprop_ratio"] < 1e-3
    assert 0.6 < f.evidence["per_layer_factor"] < 0.8  # 1/sqrt(2) = 0.707
    assert f.layers[0] == cu.table["layer"].iloc[0]  # input side named first
    assert cu.table["layer"].iloc[-1] not in f.layers
    assert "'0'" in f.message and "per layer" in f.message
    assert "he_init" in f.remedies
    assert cu.table["backprop_ratio"].iloc[0] == pytest.approx(
        f.evidence["backprop_ratio"], rel=1e-4
    )


def test_relu_30_layers_he_is_healthy():
    torch.manual_seed(0)
    model = mlp(30, 64, nn.ReLU, he_normal)
    cu = gw.check(model, torch.randn(32, 64))
    assert cu.verdict == "healthy"
    assert not kinds(cu) & {"vanishing", "exploding", "nonfinite"}
    ratio = cu.table["backprop_ratio"].iloc[0]
    assert 0.1 < ratio < 10
    # 30 layers, healthy: the He et al. 2016 note, not a vanishing finding
    info = finding(cu, "healthy_deep")
    assert info.severity == "info" and info.remedies == ("residual",)


def test_sigmoid_standard_init_vanishes_at_the_predicted_rate():
    # Glorot & Bengio's standard init: n Var[W] = 1/3, and sigmoid'(~0) = 1/4, so the
    # back-propagated norm shrinks by ~ sqrt(1/3) / 4 = 0.144 per layer.
    torch.manual_seed(0)
    model = mlp(20, 64, nn.Sigmoid, standard)
    cu = gw.check(model, torch.randn(32, 64))
    assert cu.verdict == "vanishing"
    f = finding(cu, "vanishing")
    assert f.evidence["per_layer_factor"] == pytest.approx(math.sqrt(1 / 3) / 4, rel=0.15)
    assert f.evidence["backprop_ratio"] < 1e-12
    assert f.remedies[:2] == ("relu", "he_init")  # sigmoid: swap the activation


def test_tanh_sigma_w2_4_explodes_at_the_mean_field_rate():
    # Chaotic phase: chi1 > 1, the squared norm grows by chi1 per layer toward the input.
    torch.manual_seed(0)
    model = mlp(24, 128, nn.Tanh, gaussian(4.0))
    cu = gw.check(model, torch.randn(32, 128))
    assert cu.verdict == "exploding"
    f = finding(cu, "exploding")
    expected = math.sqrt(chi1_tanh(4.0))
    assert expected == pytest.approx(math.sqrt(1.3627), rel=1e-3)
    assert f.evidence["per_layer_factor"] == pytest.approx(expected, rel=0.06)
    assert f.evidence["backprop_ratio"] > 10
    assert "clip_grad_norm" in f.remedies


def test_tanh_critical_init_is_not_exploding():
    torch.manual_seed(0)
    cu = gw.check(mlp(24, 128, nn.Tanh, gaussian(1.0)), torch.randn(32, 128))
    assert not kinds(cu) & {"exploding", "vanishing"}


def test_nan_in_forward_names_the_layer():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 16), SqrtLayer(16), nn.Linear(16, 4)
    )
    cu = gw.check(model, torch.randn(8, 8))
    assert cu.verdict == "nonfinite"
    assert math.isnan(cu.loss)
    f = finding(cu, "nonfinite")
    assert f.layers == ("3",) and f.severity == "error" and f.steps is None
    assert f.evidence["origin"] == "forward"
    assert f.evidence["side"] == "output side" and f.evidence["position"] == 2
    assert "'3'" in f.message
    json.dumps(cu.to_dict(), allow_nan=False)  # NaN loss still serialisable


class SqrtOfZero(nn.Module):
    """Finite forward (adds exactly 0), NaN gradient: d sqrt(u^2)/du at u = 0 is inf * 0."""

    def __init__(self, n):
        super().__init__()
        self.w = nn.Parameter(torch.ones(n))

    def forward(self, x):
        u = x * self.w
        return x + torch.sqrt((u - u.detach()) ** 2)


def test_nan_in_backward_names_the_output_side_most_layer():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), SqrtOfZero(16), nn.Linear(16, 4))
    cu = gw.check(model, torch.randn(8, 8))
    assert math.isfinite(cu.loss)
    f = finding(cu, "nonfinite")
    assert f.evidence["origin"] == "backward"
    assert f.layers == ("1",)
    assert set(f.evidence["layers_nonfinite_grad"]) == {"0", "1"}
    assert cu.table.set_index("layer").loc["1", "nonfinite"] > 0
    assert cu.table.set_index("layer").loc["2", "nonfinite"] == 0


def test_nan_inputs_are_reported_as_inputs():
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    x = torch.randn(8, 4)
    x[0, 0] = float("nan")
    f = finding(gw.check(model, x), "nonfinite")
    assert f.evidence["origin"] == "input" and f.layers == ()
    assert "inputs already hold NaN/Inf" in f.message


# ------------------------------------------------------------------------------ table
def brute_force(model, x, loss_of):
    """backprop_norm and grad_norm with plain autograd (retain_grad on each layer output)."""
    model = copy.deepcopy(model)
    outs = {}
    layers = {n: m for n, m in model.named_modules() if list(m.parameters(recurse=False))}

    def keep(name, mod, args, out):
        out.retain_grad()
        outs[name] = out

    hs = [m.register_forward_hook(partial(keep, n)) for n, m in layers.items()]
    loss = loss_of(model(x))
    loss.backward()
    for h in hs:
        h.remove()
    bp = {n: outs[n].grad.norm().item() for n in layers}
    gn = {
        n: math.sqrt(sum(p.grad.pow(2).sum().item() for p in m.parameters(recurse=False)))
        for n, m in layers.items()
    }
    return bp, gn, loss.item()


def small_model():
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3))


def test_table_matches_brute_force_autograd():
    model, x = small_model(), torch.randn(5, 6)
    cu = gw.check(model, x)
    bp, gn, loss = brute_force(model, x, lambda y: 0.5 * y.pow(2).sum() / y.shape[0])
    t = cu.table
    assert list(t["layer"]) == ["0", "2", "4"]  # input side first
    assert list(t["type"]) == ["Linear"] * 3
    assert list(t.columns) == ["layer", "type", *STAT_COLUMNS, "backprop_ratio", "grad_ratio"]
    np.testing.assert_allclose(t["backprop_norm"], [bp[n] for n in t["layer"]], rtol=1e-5)
    np.testing.assert_allclose(t["grad_norm"], [gn[n] for n in t["layer"]], rtol=1e-5)
    np.testing.assert_allclose(t["backprop_ratio"], t["backprop_norm"] / bp["4"], rtol=1e-6)
    assert t["backprop_ratio"].iloc[-1] == 1.0 and t["grad_ratio"].iloc[-1] == 1.0
    assert cu.loss == pytest.approx(loss, rel=1e-6)
    # activation statistics land on the layer the activation follows
    assert math.isnan(t["dead_frac"].iloc[0]) and t["saturated_frac"].iloc[0] >= 0
    assert t["dead_frac"].iloc[1] >= 0 and math.isnan(t["saturated_frac"].iloc[1])
    assert math.isnan(t["act_mean"].iloc[2])  # nothing follows the last layer
    out1 = torch.tanh(model[0](x))
    assert t["act_mean"].iloc[0] == pytest.approx(out1.mean().item(), rel=1e-5, abs=1e-7)


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    widths=st.lists(st.integers(2, 9), min_size=2, max_size=5),
    act=st.sampled_from([nn.ReLU, nn.Tanh, nn.Sigmoid, nn.GELU]),
    batch=st.integers(1, 6),
)
def test_backprop_norm_matches_brute_force_on_random_mlps(widths, act, batch):
    torch.manual_seed(len(widths) + batch)
    mods = []
    for a, b in zip(widths[:-1], widths[1:], strict=True):
        mods += [nn.Linear(a, b), act()]
    model = nn.Sequential(*mods)
    x = torch.randn(batch, widths[0])
    cu = gw.check(model, x)
    bp, gn, _ = brute_force(model, x, lambda y: 0.5 * y.pow(2).sum() / y.shape[0])
    np.testing.assert_allclose(
        cu.table["backprop_norm"], [bp[n] for n in cu.table["layer"]], rtol=1e-5, atol=1e-12
    )


def test_losses_with_targets():
    model, x = small_model(), torch.randn(5, 6)
    labels = torch.tensor([0, 2, 1, 1, 0])
    cu = gw.check(model, x, labels)
    assert cu.run.meta["checkup"]["loss_kind"] == "cross_entropy"
    assert cu.loss == pytest.approx(F.cross_entropy(model(x), labels).item(), rel=1e-6)
    y = torch.randn(5, 3)
    cu = gw.check(model, x, y)
    assert cu.run.meta["checkup"]["loss_kind"] == "mse"
    assert cu.loss == pytest.approx(F.mse_loss(model(x), y).item(), rel=1e-6)
    cu = gw.check(model, x, loss_fn=lambda out: out.abs().sum())
    assert cu.loss == pytest.approx(model(x).abs().sum().item(), rel=1e-6)


# --------------------------------------------------------------------- model untouched
def test_model_is_left_as_it_was():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Dropout(0.5), nn.Linear(8, 3)
    )
    model.train()
    model[4].eval()  # a submodule in another mode than its parent
    g0 = torch.full_like(model[0].weight, 7.0)
    model[0].weight.grad = g0
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    buffers = {n: b.detach().clone() for n, b in model.named_buffers()}
    modes = [m.training for m in model.modules()]
    x = torch.randn(16, 6) * 3 + 1
    rng = torch.get_rng_state()

    cu = gw.check(model, x)  # dropout in train mode draws random numbers: under a forked RNG

    assert cu.verdict in {"healthy", "dead"}
    assert model[0].weight.grad is g0 and torch.all(g0 == 7.0)
    assert all(p.grad is None for n, p in model.named_parameters() if n != "0.weight")
    assert [m.training for m in model.modules()] == modes
    for n, b in model.named_buffers():
        assert torch.equal(b, buffers[n]), n  # running stats and num_batches_tracked
    for n, p in model.named_parameters():
        assert torch.equal(p, params[n])
    assert torch.equal(torch.get_rng_state(), rng)
    assert not model._forward_hooks and not model._forward_pre_hooks
    assert all(not m._forward_hooks for m in model.modules())


def test_eval_mode_uses_running_stats():
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2))
    with torch.no_grad():
        model[1].running_mean.fill_(5.0)
    model.train()
    x = torch.randn(8, 4)
    cu = gw.check(model, x, train_mode=False)
    model.eval()
    expected = 0.5 * model(x).pow(2).sum().item() / 8
    assert cu.loss == pytest.approx(expected, rel=1e-5)
    assert model[1].running_mean[0].item() == 5.0


# -------------------------------------------------------------------- temporal flow
def small_rnn(cls, batch_first=True, recurrent_scale=None):
    torch.manual_seed(0)
    rnn = cls(3, 16, batch_first=batch_first)
    if recurrent_scale is not None:
        with torch.no_grad():
            w = rnn.weight_hh_l0
            w.mul_(recurrent_scale / torch.linalg.matrix_norm(w, ord=2))
    return rnn


def test_temporal_flow_decays_in_a_contracting_tanh_rnn():
    # Pascanu et al. 2013: with |tanh'| <= 1 and ||W_rec|| = 0.8 < 1, the gradient reaching
    # x_t shrinks at least by 0.8 per step back in time.
    model = LastStep(small_rnn(nn.RNN, recurrent_scale=0.8), 16)
    x = torch.randn(4, 50, 3)
    cu = gw.check(model, x)
    tf = cu.temporal
    assert list(tf.columns) == ["layer", "t", "grad_norm", "ratio"]
    assert list(tf["layer"].unique()) == ["rnn"]
    assert list(tf["t"]) == list(range(50))
    assert (tf["grad_norm"] > 0).all()
    r = tf["ratio"].to_numpy()
    assert r[-1] == 1.0
    assert r[-2] < 0.8 + 1e-6 and r[-11] < 0.8**10
    assert r[0] < 0.8**49
    assert np.all(np.diff(np.log(r)) > 0)  # monotone decay back in time
    # oracle: d loss / d x by plain autograd
    xr = x.clone().requires_grad_(True)
    out = model(xr)
    (0.5 * out.pow(2).sum() / 4).backward()
    oracle = xr.grad.double().norm(dim=(0, 2)).numpy()  # float64: the far steps are ~1e-21
    np.testing.assert_allclose(tf["grad_norm"], oracle, rtol=1e-5)


def test_temporal_flow_time_major_and_lstm():
    torch.manual_seed(0)
    lstm = nn.LSTM(3, 8)  # batch_first=False: (T, N, F)
    model = nn.Sequential()
    model.add_module("lstm", lstm)

    def loss_fn(out):  # out = (output (T, N, H), (h, c))
        return out[0][-1].pow(2).sum()

    x = torch.randn(30, 4, 3)
    cu = gw.check(model, x, loss_fn=loss_fn)
    tf = cu.temporal
    assert len(tf) == 30
    xr = x.clone().requires_grad_(True)
    loss_fn(lstm(xr)).backward()
    np.testing.assert_allclose(tf["grad_norm"], xr.grad.norm(dim=(1, 2)).numpy(), rtol=1e-5)


def test_float64_model():
    model = small_model().double()
    x = torch.randn(5, 6, dtype=torch.float64)
    cu = gw.check(model, x)
    bp, _, _ = brute_force(model, x, lambda y: 0.5 * y.pow(2).sum() / y.shape[0])
    np.testing.assert_allclose(
        cu.table["backprop_norm"], [bp[n] for n in cu.table["layer"]], rtol=1e-5
    )
    assert all(p.dtype == torch.float64 and p.grad is None for p in model.parameters())


def test_no_recurrent_layer_gives_an_empty_temporal_frame():
    cu = gw.check(small_model(), torch.randn(4, 6))
    assert cu.temporal.empty and list(cu.temporal.columns) == ["layer", "t", "grad_norm", "ratio"]


# --------------------------------------------------------------------------- output
def test_repr_summary_and_dict():
    torch.manual_seed(0)
    cu = gw.check(mlp(12, 16, nn.Sigmoid, standard), torch.randn(8, 16))
    assert repr(cu).startswith("Checkup(verdict='vanishing'")
    s = cu.summary()
    assert "VANISHING" in s and "[error] vanishing" in s and "Layers (input side first)" in s
    d = json.loads(json.dumps(cu.to_dict(), allow_nan=False))
    assert d["verdict"] == "vanishing" and len(d["table"]) == 12
    assert d["table"][0]["dead_frac"] is None  # does not apply to sigmoid layers
    assert d["findings"][0]["kind"] == "vanishing"


# --------------------------------------------------------------------------- errors
def test_wrong_input_shape_names_inputs_and_the_expected_shape():
    model = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 2))
    with pytest.raises(gw.GradwatchValueError, match=r"inputs.*\(\.\.\., 16\).*\(8, 10\)"):
        gw.check(model, torch.randn(8, 10))
    conv = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(144, 2))
    with pytest.raises(gw.GradwatchValueError, match=r"inputs.*\(N, 3, H, W\)"):
        gw.check(conv, torch.randn(2, 1, 8, 8))


def test_model_without_parameters_names_model():
    with pytest.raises(gw.GradwatchValueError, match=r"^model"):
        gw.check(nn.Sequential(nn.ReLU()), torch.randn(2, 3))
    with pytest.raises(gw.GradwatchTypeError, match=r"^model"):
        gw.check(lambda x: x, torch.randn(2, 3))


def test_lazy_model_must_be_materialised_first():
    model = nn.Sequential(nn.LazyLinear(4), nn.ReLU(), nn.Linear(4, 2))
    with pytest.raises(gw.GradwatchValueError, match=r"^model.*lazy"):
        gw.check(model, torch.randn(2, 3))
    model(torch.randn(2, 3))  # materialised: now it works
    assert gw.check(model, torch.randn(8, 3)).table.shape[0] == 2


def test_inputs_must_be_tensors():
    model = nn.Linear(3, 2)
    for bad in ([[1.0, 2.0, 3.0]], np.zeros((2, 3)), "x", (), (torch.zeros(2, 3), 1)):
        with pytest.raises(gw.GradwatchTypeError, match=r"^inputs"):
            gw.check(model, bad)


def test_bad_targets_and_loss_fn():
    model = nn.Linear(3, 2)
    x = torch.randn(4, 3)
    with pytest.raises(gw.GradwatchValueError, match=r"^targets"):
        gw.check(model, x, torch.randn(4, 5))
    with pytest.raises(gw.GradwatchValueError, match=r"^targets must be class labels"):
        gw.check(model, x, torch.tensor([0, 1, 7, 1]))
    with pytest.raises(gw.GradwatchTypeError, match=r"^targets"):
        gw.check(model, x, [0, 1, 0, 1])
    with pytest.raises(gw.GradwatchValueError, match=r"^loss_fn"):
        gw.check(model, x, loss_fn=lambda out: out)
    with pytest.raises(gw.GradwatchTypeError, match=r"^loss_fn"):
        gw.check(model, x, loss_fn="mse")


def test_frozen_model_is_an_error_and_is_left_intact():
    model = nn.Linear(3, 2).requires_grad_(False)
    with pytest.raises(gw.GradwatchValueError, match=r"requires grad"):
        gw.check(model, torch.randn(4, 3))
    assert model.weight.grad is None and not model._forward_hooks
