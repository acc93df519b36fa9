"""gw.fix: picks remedies from a checkup, applies them to a copy, and verifies them."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import nn

import gradwatch as gw
from gradwatch import remedies
from gradwatch.remedies.fix import REMEDY_KINDS, backprop_spread
from gradwatch.remedies.fix_report import architecture_signature


def mlp(depth, act, width=64, d_in=64, d_out=10):
    layers, n = [], d_in
    for _ in range(depth - 1):
        layers += [nn.Linear(n, width), act()]
        n = width
    layers.append(nn.Linear(n, d_out))
    return nn.Sequential(*layers)


def structure(model):
    return [type(m) for m in model.modules()], [p.shape for p in model.parameters()]


@pytest.fixture(scope="module")
def digits():
    x, y = load_digits(return_X_y=True)
    x = (x - x.mean(0)) / (x.std(0) + 1e-8)  # standardized features; constant pixels stay 0
    return torch.tensor(x, dtype=torch.float32), torch.tensor(y)


@pytest.fixture(autouse=True)
def one_thread():
    # Tiny matrices: two threads on two shared, busy cores are up to 10x slower than one.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def sigmoid_net(seed=0):
    torch.manual_seed(seed)
    model = mlp(20, nn.Sigmoid)
    remedies.standard_init_(model)
    return model


def train(model, x, y, seed, steps, lr=1e-3, batch=64):
    """Adam on fixed batches (same seed -> same batches); returns the final full-data loss."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(steps):
        idx = torch.randint(0, len(x), (batch,), generator=gen)
        loss = F.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return F.cross_entropy(model(x), y).item()


@pytest.mark.parametrize("seed", [0, 1])
def test_deep_sigmoid_is_fixed_and_then_trains_faster(digits, seed):
    x, y = digits
    model = sigmoid_net(seed)
    xb, yb = x[:256], y[:256]
    assert gw.check(model, xb, yb, F.cross_entropy).verdict == "vanishing"

    fixed, report = gw.fix(model, xb, yb, F.cross_entropy)
    assert report.verdict_before == "vanishing"
    assert report.verdict_after == "healthy"
    assert gw.check(fixed, xb, yb, F.cross_entropy).verdict == "healthy"  # measured again
    assert report.applied and all(isinstance(d, dict) for _, d in report.applied)
    assert backprop_spread(report.after) < backprop_spread(report.before) - 3

    torch.manual_seed(seed)
    loss_orig = train(model, x, y, seed, steps=150)
    torch.manual_seed(seed)
    loss_fixed = train(fixed, x, y, seed, steps=150)
    # The vanishing net barely leaves chance level (ln 10 = 2.30); the fixed one learns.
    assert loss_orig > 0.8 * math.log(10)
    assert loss_fixed < 0.5 * loss_orig
    assert loss_fixed < 1.0


def test_relu_xavier_is_fixed_by_init_alone():
    model = mlp(30, nn.ReLU)
    remedies.xavier_init_(model)
    x = torch.randn(64, 64)
    assert gw.check(model, x).verdict == "vanishing"  # He et al. 2015: Xavier stalls at 30

    fixed, report = gw.fix(model, x, allow=("init",))
    assert (report.verdict_before, report.verdict_after) == ("vanishing", "healthy")
    assert structure(fixed) == structure(model)
    assert architecture_signature(fixed) == architecture_signature(model)
    assert report.changed_architecture is False
    assert report.applied
    assert all(REMEDY_KINDS[name] == "init" for name, _ in report.applied)
    assert report.applied[0][1]["kind"] == "init"
    fixed.load_state_dict(model.state_dict())  # same keys and shapes

    table = report.table()
    assert len(table) == 30 and list(table["layer"]) == list(table["layer_before"])
    first = table.iloc[0]
    assert first["backprop_norm_after"] / table.iloc[-1]["backprop_norm_after"] > 0.1
    assert first["backprop_norm_before"] / table.iloc[-1]["backprop_norm_before"] < 1e-3


def test_users_model_is_never_modified(snapshot):
    model = sigmoid_net()
    modules_before = list(model.modules())
    params_before = [p for p in model.parameters()]
    check_unchanged = snapshot(model)
    x = torch.randn(32, 64)

    fixed, report = gw.fix(model, x)

    check_unchanged()
    assert list(model.modules()) == modules_before
    assert all(a is b for a, b in zip(model.modules(), modules_before, strict=True))
    assert all(a is b for a, b in zip(model.parameters(), params_before, strict=True))
    assert all(isinstance(m, nn.Sigmoid) for m in model if not isinstance(m, nn.Linear))
    assert fixed is not model
    ptrs = {p.data_ptr() for p in model.parameters()}
    assert not ptrs & {p.data_ptr() for p in fixed.parameters()}
    assert report.changed_architecture  # the sigmoid net needed more than init


def test_allow_is_validated():
    model, x = mlp(3, nn.ReLU), torch.randn(8, 64)
    with pytest.raises(gw.GradwatchValueError) as err:
        gw.fix(model, x, allow=("init", "dropout"))
    for kind in ("init", "activation", "normalization", "residual"):
        assert kind in str(err.value)
    assert "dropout" in str(err.value)
    with pytest.raises(gw.GradwatchValueError):
        gw.fix(model, x, allow=())
    with pytest.raises(gw.GradwatchTypeError):
        gw.fix(model, x, allow=3)
    with pytest.raises(gw.GradwatchValueError):
        gw.fix(model, x, max_rounds=0)
    with pytest.raises(gw.GradwatchTypeError):
        gw.fix("not a model", x)


def test_healthy_model_comes_back_unchanged():
    model = mlp(4, nn.ReLU)
    remedies.he_init_(model)
    x = torch.randn(32, 64)
    fixed, report = gw.fix(model, x, allow="init")
    assert report.verdict_before == report.verdict_after == "healthy"
    assert report.applied == [] and report.tried == []
    assert not report.changed_architecture
    assert fixed is not model
    for (k, a), (k2, b) in zip(model.state_dict().items(), fixed.state_dict().items(), strict=True):
        assert k == k2 and torch.equal(a, b)
    assert "already healthy" in report.summary()


def test_exploding_tanh_is_tamed_and_clipping_is_recommended():
    torch.manual_seed(0)
    model = mlp(30, nn.Tanh, width=128, d_in=128)
    with torch.no_grad():  # σw² = 4, σb² = 0: chaotic phase, χ1 ≈ 1.36 (Schoenholz et al.)
        for m in model:
            if isinstance(m, nn.Linear):
                m.weight.normal_(0.0, math.sqrt(4.0 / m.in_features))
                m.bias.zero_()
    x = torch.randn(64, 128)
    before = gw.check(model, x)
    assert before.verdict == "exploding"

    fixed, report = gw.fix(model, x)
    assert report.verdict_after == "healthy" or (
        backprop_spread(report.after) < backprop_spread(report.before) - 0.5
    )
    assert backprop_spread(gw.check(fixed, x)) < backprop_spread(before)
    assert any("clip" in r for r in report.recommendations)
    assert "clip" in report.summary()
    # clipping is a training-loop remedy: recommended, never applied
    assert all(name in REMEDY_KINDS for name, _ in report.applied)


@pytest.mark.parametrize(
    ("kind", "module_type"), [("normalization", nn.BatchNorm1d), ("residual", remedies.Residual)]
)
def test_structural_remedies_alone(kind, module_type):
    model = sigmoid_net()
    x = torch.randn(64, 64)
    fixed, report = gw.fix(model, x, allow=(kind,))
    assert [REMEDY_KINDS[name] for name, _ in report.applied] == [kind]
    assert report.changed_architecture
    assert any(isinstance(m, module_type) for m in fixed.modules())
    assert backprop_spread(report.after) < backprop_spread(report.before) - 3
    assert "architecture changed" in report.summary()
    table = report.table()
    # every original layer is matched to its place in the new model
    assert table["layer_before"].notna().sum() == 20
    assert np.isfinite(table["backprop_norm_after"]).all()


def test_max_rounds_limits_the_remedies_applied():
    model = sigmoid_net()
    x = torch.randn(64, 64)
    _, report = gw.fix(model, x, allow=("init", "normalization", "residual"), max_rounds=1)
    assert len(report.applied) == 1


def test_custom_forward_skips_sequential_only_remedies():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.ModuleList(nn.Linear(32, 32) for _ in range(20))
            self.act = nn.Sigmoid()

        def forward(self, x):
            for layer in self.body:
                x = self.act(layer(x))
            return x

    model = Net()
    remedies.standard_init_(model)
    x = torch.randn(32, 32)
    fixed, report = gw.fix(model, x, allow=("normalization", "residual"))
    assert report.applied == []
    assert all("skipped" in t and "nn.Sequential" in t["skipped"] for t in report.tried)
    assert architecture_signature(fixed) == architecture_signature(model)
    assert "no allowed remedy" in report.summary()
    assert report.recommendations  # says what else to allow


def test_report_to_dict_is_json():
    import json

    model = sigmoid_net()
    _, report = gw.fix(model, torch.randn(32, 64))
    d = json.loads(json.dumps(report.to_dict(), allow_nan=False))
    assert d["verdict_before"] == "vanishing"
    assert d["applied"][0]["remedy"] in REMEDY_KINDS
    assert len(d["layers"]) >= 20
    assert "FixReport(" in repr(report)


def test_fix_does_not_try_what_the_model_has():
    # a He-initialised ResNet without normalization explodes (forward and backward): fix
    # neither redraws He init nor adds shortcuts it has; it tries what it lacks
    from tests.diagnose.nets_by_design import NoNormResNet

    torch.manual_seed(0)
    x = torch.randn(4, 3, 8, 8)
    y = torch.randint(0, 10, (4,))
    _, report = gw.fix(NoNormResNet(32, 8), x, y, allow=("init", "residual"))
    assert report.before.verdict == "exploding"
    tried = {(t["remedy"], t.get("scheme")) for t in report.tried}
    assert ("he_init_", "he") not in tried
    assert not [t for t in report.tried if t["remedy"] == "add_residual"]
    assert tried and report.after.verdict != "exploding"
