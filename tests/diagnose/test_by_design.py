"""Verdicts that hold by design, on the four kinds of architecture the rules once got wrong.

1. Flow along the path the gradient takes: a ConvNeXt's layer scale 1e-6 shrinks its
   branches, not its residual stream, so it is not vanishing; a deep sigmoid chain is.
2. No exemption from the exploding rule: a ResNet without normalization (the forward signal
   and the loss explode with the gradient) is exploding, a plain chain of BN-ReLU convs is a
   warning with its figures (Yang et al. 2019); a BN ResNet stays healthy.
3. The flow through time, measured at the input whatever the cell: stacked GRU/LSTM over 300
   steps and a diagonal linear recurrence written as a loop or a scan vanish; a one-layer
   LSTM over 50 steps (which trains) does not.
4. Remedies chosen from what the model has: no shortcut for a DenseNet, no zero-init for
   branches that start at 1e-6, no He init for He-initialised weights or a GELU net, no
   "check the inputs" for a NaN that an exploding update caused, no clipping for a gate.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

import gradwatch as gw
from gradwatch.diagnose import diagnose
from gradwatch.verdicts import EXPLODING_RATIO, LOSS_OVER_CHANCE, TEMPORAL_GATED_VANISHED
from tests.diagnose.nets_by_design import (
    ConvNeXt,
    DiagonalSSM,
    NoNormResNet,
    StackedRNN,
    plain_bn,
)
from tests.diagnose.synthetic import geometric, make_run
from tests.test_structure import Net as BNResNet


def _check(build, x, y=None, loss=None, seed=0):
    torch.manual_seed(seed)
    model = build()
    return gw.check(model, x, y, loss)


def _images(n=4, side=16, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, side, side, generator=g), torch.randint(0, 10, (n,), generator=g)


def _time(f):
    return f.evidence.get("through") == "time"


# ------------------------------------------------------------- 1. the residual stream
def test_layer_scale_is_not_a_vanishing_gradient_along_the_stream():
    # three stages of two blocks: read through the branch outputs (γ·δ, 1e-6 of the stream)
    # the flow once looked like 1/1.3e5
    x, y = _images()
    cu = _check(lambda: ConvNeXt((8, 16, 32), (2, 2, 2)), x, y)
    assert cu.verdict == "healthy", [f.message for f in cu.findings]
    trunk = cu.run.meta["checkup"]["trunk"]
    assert len(trunk) == 6  # one join per block, read by a hook on its autograd node
    norms = np.array([t["grad_norm"] for t in trunk])
    # within a stage (same shape) the stream's gradient is flat: γ = 1e-6 keeps the blocks
    # near the identity; across the downsampling its shape, not its health, changes
    for a in (0, 2, 4):
        assert norms[a + 1] / norms[a] == pytest.approx(1, abs=1e-3)
    # a branch's output layer is the block that owns γ; inside, the gradient is γ's share
    assert [t["after"] for t in trunk] == [
        "features.2", "features.3", "features.6", "features.7", "features.10", "features.11"
    ]
    table = cu.table.set_index("layer")
    inside = table.loc["features.2.pw2", "backprop_norm"] / trunk[0]["grad_norm"]
    assert 1e-7 < inside < 1e-5  # ≈ γ = 1e-6: the branch, read against its own stream
    # the structure says the branches start small (what the remedies read)
    assert cu.run.meta["structure"]["branch_scales"] == pytest.approx([1e-6] * 6, rel=1e-3)


def test_a_deep_sigmoid_chain_is_still_vanishing():
    torch.manual_seed(0)
    layers = []
    for _ in range(16):
        lin = nn.Linear(32, 32)
        nn.init.uniform_(lin.weight, -1 / math.sqrt(32), 1 / math.sqrt(32))
        layers += [lin, nn.Sigmoid()]
    cu = gw.check(nn.Sequential(*layers, nn.Linear(32, 10)), torch.randn(16, 32),
                  torch.randint(0, 10, (16,)))
    assert cu.verdict == "vanishing"


# ----------------------------------------------------------- 2. no exemption by design
def test_a_resnet_without_normalisation_explodes_forward_and_backward():
    x, y = _images(side=8)
    cu = _check(NoNormResNet, x, y)
    (f,) = [f for f in cu.findings if f.kind == "exploding"]
    assert (cu.verdict, f.severity, f.evidence["path"]) == ("exploding", "error", "residual")
    assert f.evidence["backprop_ratio"] > EXPLODING_RATIO
    assert f.evidence["loss_over_chance"] > LOSS_OVER_CHANCE  # logits of order 1e3 and up
    assert f.evidence["forward_gain"] > 1e3 and f.evidence["forward_exploding"] is True
    assert f.evidence["chance"] == pytest.approx(math.log(10), rel=1e-5)
    assert "chance" in f.message and "Zhang et al. 2019" in f.message


def test_a_plain_chain_of_bn_relu_convs_is_a_warning_with_its_figures():
    x, y = _images(n=8, side=8)
    cu = _check(plain_bn, x, y)
    (f,) = [f for f in cu.findings if f.kind == "exploding"]
    assert (cu.verdict, f.severity, f.evidence["path"]) == ("exploding", "warning", "normalized")
    assert f.evidence["backprop_ratio"] > EXPLODING_RATIO and f.evidence["per_layer_factor"] > 1.1
    assert f.evidence["input_grad_over_weight"] > 1
    assert "Yang et al. 2019" in f.message and "‖∇W‖/‖W‖" in f.message
    assert not [f for f in cu.findings if f.kind == "healthy_deep"]  # not explained away
    assert f.remedies[0] == "residual" and "he_init" not in f.remedies


def test_a_bn_resnet_stays_healthy():
    x, _ = _images(n=4, side=8)
    cu = _check(BNResNet, x, torch.randint(0, 2, (4,)))
    assert cu.verdict == "healthy", [f.message for f in cu.findings]
    assert len(cu.run.meta["checkup"]["trunk"]) == 3


# ------------------------------------------------------------ 3. the flow through time
def _adding(t, n=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, t, 2, generator=g), torch.rand(n, 1, generator=g)


@pytest.mark.parametrize("kind,forget_bias", [("GRU", None), ("LSTM", 1.0)])
def test_stacked_gated_cells_over_300_steps_vanish_through_time(kind, forget_bias):
    x, y = _adding(300)
    cu = _check(lambda: StackedRNN(kind, 4, 8, forget_bias), x, y, F.mse_loss)
    (f,) = [f for f in cu.findings if _time(f)]
    assert (cu.verdict, f.kind, f.severity, f.layers) == ("vanishing", "vanishing", "error",
                                                          ("rnn",))
    assert f.evidence["gated"] is True
    assert f.evidence["first_over_last"] < TEMPORAL_GATED_VANISHED
    assert "clip_grad_norm" not in f.remedies and "chrono_init" in f.remedies
    if forget_bias is not None:
        assert "forget_gate_bias" not in f.remedies  # it has one


@pytest.mark.parametrize("scan", [False, True])
def test_a_diagonal_linear_recurrence_written_as_a_module_is_seen_at_its_input(scan):
    x, y = _adding(512)
    cu = _check(lambda: DiagonalSSM(scan=scan), x, y, F.mse_loss)
    (f,) = [f for f in cu.findings if _time(f)]
    assert (cu.verdict, f.severity, f.layers) == ("vanishing", "error", ())
    assert f.evidence["measured_at"] == "model input" and f.evidence["time_steps"] == 512
    assert f.evidence["first_over_last"] < 1e-9
    assert f.remedies == ("slow_decay_init",)
    flow = cu.temporal[cu.temporal.layer == "(input)"]
    assert len(flow) == 512 and flow["ratio"].iloc[-1] == 1.0
    # the loop's additions are its time axis, not residual depth
    assert cu.run.meta["structure"]["residual_joins"] == 0
    assert not [f for f in cu.findings if not _time(f)]


def test_a_one_layer_lstm_over_50_steps_is_a_note_not_a_verdict():
    x, y = _adding(50, n=4)
    cu = _check(lambda: StackedRNN("LSTM", 1, 16), x, y, F.mse_loss)
    (f,) = [f for f in cu.findings if _time(f)]
    assert (cu.verdict, f.severity) == ("healthy", "info")
    assert TEMPORAL_GATED_VANISHED < f.evidence["first_over_last"] < 1e-4


def test_the_input_flow_of_a_sequence_model_needs_no_recurrent_module():
    # ‖∂L/∂x_t‖ at the model input, by brute force
    torch.manual_seed(0)
    model = DiagonalSSM(d=4, lo=0.5, hi=0.5)
    x, y = _adding(20, n=3)
    cu = gw.check(model, x, y, F.mse_loss)
    xr = x.clone().requires_grad_(True)
    F.mse_loss(model(xr), y).backward()
    oracle = xr.grad.double().norm(dim=(0, 2)).numpy()
    got = cu.temporal[cu.temporal.layer == "(input)"]["grad_norm"].to_numpy()
    np.testing.assert_allclose(got, oracle, rtol=1e-6)
    assert got[-2] / got[-1] == pytest.approx(0.5, rel=1e-4)  # λ = 0.5 per step


# ------------------------------------------------------- 4. remedies from what it has
def _vanishing_run(**structure):
    return make_run(12, {"backprop_norm": geometric(0.5, 12)}, checkup={"batch_size": 8},
                    structure=structure)


def test_shortcuts_and_small_branches_are_not_offered_again():
    dense = diagnose(_vanishing_run(dense_joins=4, shortcuts=True))
    (f,) = [f for f in dense if f.kind == "vanishing"]
    assert "residual" not in f.remedies  # a DenseNet's concatenations are shortcuts
    small = diagnose(_vanishing_run(residual=True, shortcuts=True, has_norm=True,
                                    norm_layers=["l5"], branch_scales=[1e-6] * 4))
    (f,) = [f for f in small if f.kind == "vanishing"]
    assert "zero_init_last_norm" not in f.remedies and "residual" not in f.remedies
    plain = diagnose(_vanishing_run())
    (f,) = [f for f in plain if f.kind == "vanishing"]
    assert {"residual", "batchnorm", "he_init"} <= set(f.remedies)
    assert "to lift the per-layer factor 0.5 toward 1" in f.message


def test_he_init_is_not_offered_to_he_initialised_weights_or_a_gelu_net():
    x, y = _images(side=8)
    cu = _check(NoNormResNet, x, y)  # He init, exploding
    (f,) = [f for f in cu.findings if f.kind == "exploding"]
    assert "he_init" not in f.remedies and f.remedies[0] == "fixup"
    assert cu.run.meta["structure"]["init_scale"]["fan_in"] == pytest.approx(2.0, rel=0.1)
    # a GELU net: He's gain is derived for ReLU; LSUV measures the gain instead
    torch.manual_seed(0)
    layers = []
    for _ in range(30):
        lin = nn.Linear(32, 32)
        nn.init.normal_(lin.weight, 0.0, 0.5 / math.sqrt(32))
        layers += [lin, nn.GELU()]
    cu = gw.check(nn.Sequential(*layers, nn.Linear(32, 10)), torch.randn(16, 32),
                  torch.randint(0, 10, (16,)))
    (f,) = [f for f in cu.findings if f.kind == "vanishing"]
    assert "he_init" not in f.remedies and "lsuv" in f.remedies


def test_a_nan_caused_by_an_exploding_update_does_not_blame_the_inputs(tmp_path):
    torch.manual_seed(0)
    model = NoNormResNet(32, 8)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x, y = _images(n=8, side=8)
    with gw.watch(model, run_dir=None, optimizer=opt, detail_every=1, diagnose=False) as mon:
        for _ in range(4):
            opt.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            mon.step(loss)
            if not torch.isfinite(loss):
                break
    findings = gw.diagnose(mon.run)
    (nan,) = [f for f in findings if f.kind == "nonfinite"]
    assert nan.evidence["first_step"] > 0 and nan.evidence["inputs_finite"] is True
    assert "check_inputs" not in nan.remedies
    assert nan.evidence["caused_by_exploding_at_step"] == 0
    assert "exploding gradient found at step 0" in nan.message
    (depth,) = [f for f in findings if f.evidence.get("axis") == "depth"]
    assert depth.steps == (0, 0) and depth.evidence["forward_exploding"] is True
