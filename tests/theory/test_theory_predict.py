"""predict(model): verdicts for classic initialisations, and the numbers against autograd."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

import gradwatch as gw
import gradwatch.theory as T
from gradwatch.errors import GradwatchTypeError, GradwatchValueError


def mlp(depth, width, act, init=None, n_in=None, n_out=10, seed=0):
    torch.manual_seed(seed)
    layers, fan_in = [], n_in or width
    for _ in range(depth - 1):
        layers += [nn.Linear(fan_in, width), act()]
        fan_in = width
    layers.append(nn.Linear(fan_in, n_out))
    model = nn.Sequential(*layers)
    if init is not None:
        for m in model.modules():
            if isinstance(m, nn.Linear):
                init(m)
    return model


def he_init(m):
    nn.init.kaiming_normal_(m.weight)  # std √(2 / fan_in)
    nn.init.zeros_(m.bias)


def gaussian_init(sw2, sb2=0.0):
    def init(m):
        nn.init.normal_(m.weight, std=math.sqrt(sw2 / m.in_features))
        nn.init.normal_(m.bias, std=math.sqrt(sb2)) if sb2 else nn.init.zeros_(m.bias)

    return init


def measured_backprop_ratio(model, width_in, batch=64, seed=0):
    """‖∂loss/∂(first layer output)‖² / ‖∂loss/∂(last layer output)‖² by autograd."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    outs = {}

    def keep(name):
        def hook(_m, _inp, out):
            out.retain_grad()
            outs[name] = out

        return hook

    handles = [linears[0].register_forward_hook(keep("first"))]
    handles.append(linears[-1].register_forward_hook(keep("last")))
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, width_in, generator=gen)
    y = model(x)
    (y * torch.randn(y.shape, generator=gen)).sum().backward()
    for h in handles:
        h.remove()
    return (outs["first"].grad.pow(2).sum() / outs["last"].grad.pow(2).sum()).item()


def test_relu_mlp_with_pytorch_default_init_vanishes():
    # Default nn.Linear init is Kaiming-uniform with a = √5: Var(W) = 1/(3 fan_in), σw² = 1/3.
    pred = T.predict(mlp(30, 100, nn.ReLU))
    assert pred.verdict == "vanishing"
    assert pred.phase == "ordered"
    np.testing.assert_allclose(pred.table["sigma_w2"], 1 / 3, rtol=0.06)
    # 100 biases per hidden layer (the last has only 10: too few to check).
    np.testing.assert_allclose(pred.table["sigma_b2"][:-1], 1 / (3 * 100), rtol=0.35)
    assert pred.gradient_ratio < 1e-15  # about (1/6)^29
    assert pred.depth == 30


def test_relu_mlp_with_he_init_is_healthy():
    pred = T.predict(mlp(30, 100, nn.ReLU, he_init))
    assert pred.verdict == "healthy"
    assert pred.phase == "critical"
    np.testing.assert_allclose(pred.table["sigma_w2"], 2.0, rtol=0.06)
    assert 0.3 < pred.gradient_ratio < 3


def test_tanh_mlp_at_sigma_w2_four_explodes():
    pred = T.predict(mlp(30, 100, nn.Tanh, gaussian_init(4.0)))
    assert pred.verdict == "exploding"
    assert pred.phase == "chaotic"
    assert pred.gradient_ratio > 1e2


def test_table_layout_and_activation_names():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(5, 6),
        nn.LeakyReLU(0.2),
        nn.Linear(6, 7),
        nn.Dropout(0.1),  # not an activation: skipped
        nn.GELU(),
        nn.Linear(7, 8),
        nn.Identity(),
        nn.Linear(8, 2),
    )
    pred = T.predict(model)
    table = pred.table
    assert list(table.columns) == [
        "layer",
        "type",
        "activation",
        "fan_in",
        "sigma_w2",
        "sigma_b2",
        "q",
        "chi1",
        "attenuation",
    ]
    assert list(table["layer"]) == ["0", "2", "5", "7"]
    assert list(table["activation"]) == ["leaky_relu:0.2", "gelu", "linear", "linear"]
    assert list(table["fan_in"]) == [5, 6, 7, 8]
    assert table["attenuation"].iloc[-1] == 1.0
    assert pred.gradient_ratio == table["attenuation"].iloc[0]
    w = model[0].weight.detach().double()
    assert table["sigma_w2"].iloc[0] == pytest.approx(5 * w.var(unbiased=False).item())
    first = table.iloc[0]
    assert first["q"] == pytest.approx(first["sigma_w2"] + first["sigma_b2"])  # q0 = 1
    assert pred.verdict in pred.summary()
    assert pred.to_dict()["layers"][0]["layer"] == "0"


def test_conv_layers_use_their_receptive_field_as_fan_in():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3), nn.ReLU(), nn.Conv2d(16, 16, 3, bias=False), nn.ReLU()
    )
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight)
    table = T.predict(model).table
    assert list(table["fan_in"]) == [27, 144]
    np.testing.assert_allclose(table["sigma_w2"], 2.0, rtol=0.15)
    assert table["sigma_b2"].iloc[1] == 0.0


@pytest.mark.parametrize(
    ("act", "init", "depth"),
    [
        (nn.Tanh, gaussian_init(1.5, 0.05), 15),
        (nn.ReLU, gaussian_init(1.0), 12),  # Xavier-like under ReLU: (1/2) per layer
        (nn.Tanh, gaussian_init(3.0, 0.05), 12),
    ],
)
def test_predicted_ratio_matches_autograd_on_the_model(act, init, depth):
    model = mlp(depth, 512, act, init, n_out=512)
    predicted = T.predict(model).gradient_ratio
    measured = measured_backprop_ratio(model, 512)
    assert abs(math.log(predicted)) > 1.5  # far from 1, so the check means something
    # Finite width scatters log(measured) by about 0.1 (seen over seeds); an off-by-one
    # in the layer/activation bookkeeping would shift it by |log ∫Dz φ'²| (0.69 for ReLU).
    assert math.log(measured) == pytest.approx(math.log(predicted), abs=0.4)


def test_q0_scales_the_first_layer():
    model = mlp(3, 20, nn.Tanh)
    a, b = T.predict(model, q0=1.0).table, T.predict(model, q0=4.0).table
    sw2, sb2 = a["sigma_w2"].iloc[0], a["sigma_b2"].iloc[0]
    assert b["q"].iloc[0] == pytest.approx(4 * sw2 + sb2)


def test_model_without_layers_is_an_error_naming_model():
    with pytest.raises(GradwatchValueError, match="model"):
        T.predict(nn.Sequential(nn.ReLU(), nn.Tanh()))
    with pytest.raises(GradwatchTypeError, match="model"):
        T.predict("mlp")
    with pytest.raises(GradwatchValueError, match="q0"):
        T.predict(mlp(2, 4, nn.ReLU), q0=0.0)
    with pytest.raises(GradwatchValueError, match="tol"):
        T.predict(mlp(2, 4, nn.ReLU), tol="x")
    with pytest.raises(GradwatchValueError, match="no weights"):
        T.predict(nn.Linear(4, 0))


def test_predict_check_and_diagnose_share_one_verdict_on_a_40_layer_tanh_net():
    # the same thresholds (gradwatch.verdicts) on the same norm ratio: theory and measurement
    # agree on tanh at σw² = 0.5 (ordered: ‖δ‖ shrinks by about √0.5 per layer) and at the
    # critical σw² = 1
    import gradwatch as gw

    model = mlp(40, 200, nn.Tanh, gaussian_init(0.5), seed=1)
    pred = T.predict(model)
    cu = gw.check(model, torch.randn(64, 200))
    assert pred.verdict == cu.verdict == "vanishing"
    measured = cu.findings[0].evidence["backprop_ratio"]
    assert math.log10(measured) == pytest.approx(math.log10(pred.norm_ratio), abs=1.0)
    critical = mlp(40, 200, nn.Tanh, gaussian_init(1.0), seed=1)
    assert T.predict(critical).verdict == gw.check(critical, torch.randn(64, 200)).verdict
    assert T.predict(critical).verdict == "healthy"


def test_models_outside_the_theory_are_uncertain_with_the_reason():
    class Cumulative(nn.Module):  # an operation without a mean-field rule
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(8, 8), nn.Linear(8, 2)

        def forward(self, x):
            return self.b(torch.cumsum(self.a(x), dim=-1))

    cases = {
        "recurrent layer": nn.Sequential(nn.RNN(8, 8), nn.Linear(8, 2)),
        "attention": nn.Sequential(nn.Linear(8, 8), nn.MultiheadAttention(8, 2)),
        "one slope per channel": nn.Sequential(nn.Linear(8, 8), nn.PReLU(8), nn.Linear(8, 2)),
        "no mean-field rule for the operation aten.cumsum": Cumulative(),
    }
    for reason, model in cases.items():
        pred = T.predict(model)
        assert pred.verdict == "uncertain" and reason in pred.reason, (reason, pred.reason)
        assert pred.summary().startswith("uncertain: ")
    # a batch does not help a recurrent net too narrow for the theory: the reason says to
    # measure it (tests/theory/test_theory_recurrent.py: the nets it predicts)
    rnn = T.predict(nn.RNN(8, 8), inputs=torch.randn(5, 3, 8))
    assert rnn.verdict == "uncertain" and "gw.check" in rnn.reason and "inputs=" not in rnn.reason
    # no probe can be built when a norm comes first: the reason says what to pass
    norm_first = T.predict(nn.Sequential(nn.LayerNorm(8), nn.Linear(8, 8), nn.Linear(8, 2)))
    assert norm_first.verdict == "uncertain" and "inputs=" in norm_first.reason
    pred = T.predict(nn.Sequential(nn.LayerNorm(8), nn.Linear(8, 2)), inputs=torch.randn(16, 8))
    assert pred.verdict == "healthy" and pred.method == "graph"


def test_convolutional_nets_say_why_or_use_the_chain():
    class ConvResidual(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(3, 8, 3, padding=1)
            self.branch = nn.Sequential(nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1))
            self.head = nn.Linear(8, 2)

        def forward(self, x):
            x = self.stem(x)
            return self.head((x + self.branch(x)).mean(dim=(2, 3)))

    class PostActivation(ConvResidual):  # the original ResNet's ReLU after the addition
        def forward(self, x):
            x = torch.relu(self.stem(x))
            return self.head(torch.relu(x + self.branch(x)).mean(dim=(2, 3)))

    torch.manual_seed(0)
    x = torch.randn(4, 3, 8, 8)
    # a pre-activation residual conv net: read from its forward pass (a probe, or the batch)
    for pred in (T.predict(ConvResidual()), T.predict(ConvResidual(), inputs=x)):
        assert pred.method == "graph" and pred.verdict != "uncertain", pred.reason
        att = pred.table.set_index("layer")["attenuation"]
        assert np.all(np.isfinite(att)) and att["head"] == 1.0
        assert 0 < att["stem"] < 1e3
    # a ReLU after the addition: the sum is not Gaussian; its law is carried by draws
    post = T.predict(PostActivation(), inputs=x)
    assert post.method == "graph" and post.verdict != "uncertain", post.reason
    att = post.table.set_index("layer")["attenuation"]
    assert np.all(np.isfinite(att)) and att["head"] == 1.0 and 0 < att["stem"] < 1e3
    # a plain chain of convolutions: a batch is read through its forward pass (flattened
    # maps into a Linear included); without one, the closed form of the chain
    chain = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.Tanh(), nn.Conv2d(16, 16, 3, padding=1), nn.Tanh(),
        nn.Flatten(), nn.Linear(16 * 64, 2),
    )  # fmt: skip
    scaled = T.predict(chain, inputs=4 * x)
    assert scaled.method == "graph" and scaled.verdict != "uncertain", scaled.reason
    assert scaled.table["q"].iloc[0] > 10 * T.predict(chain, inputs=x).table["q"].iloc[0]
    assert T.predict(chain).method == "chain"  # the 32x32 probe does not fit its Linear
    # check's second opinion stays silent on it (the closed form does not count positions)
    cu = gw.check(chain, x)
    assert "theory_mismatch" not in [f.kind for f in cu.findings]


def test_residual_and_normalised_models_are_predicted_not_uncertain():
    class Residual(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.out = nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 2)

        def forward(self, x):
            return self.out(x + self.b(torch.relu(self.a(x))))

    torch.manual_seed(0)
    models = {
        "batch norm chain": nn.Sequential(
            nn.Linear(8, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2)
        ),
        "residual block": Residual(),
        "prelu, one slope": nn.Sequential(nn.Linear(8, 8), nn.PReLU(), nn.Linear(8, 8)),
    }
    for name, model in models.items():
        pred = T.predict(model)
        assert pred.method == "graph" and pred.verdict == "healthy", (name, pred.reason)
        assert np.all(np.isfinite(pred.table["attenuation"])), name
        assert pred.table["attenuation"].iloc[-1] == 1.0


def test_nan_weights_are_not_healthy():
    model = mlp(4, 8, nn.ReLU, he_init)
    with torch.no_grad():
        model[0].weight[0, 0] = float("nan")
    pred = T.predict(model)
    assert pred.verdict == "nonfinite" and "NaN" in pred.summary()
