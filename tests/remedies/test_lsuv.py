import warnings

import pytest
import torch
from torch import nn

import gradwatch.remedies as R
from gradwatch.errors import GradwatchValueError


def output_variances(model, inputs, types=(nn.Linear, nn.Conv2d)):
    """Variance of every Linear/Conv output on one forward pass, via forward hooks."""
    seen = {}

    def record(name):
        def hook(module, args, output):
            seen.setdefault(name, output.double().var().item())

        return hook

    handles = [
        m.register_forward_hook(record(name))
        for name, m in model.named_modules()
        if isinstance(m, types)
    ]
    with torch.no_grad():
        model(inputs)
    for h in handles:
        h.remove()
    return seen


def tanh_mlp():
    layers = [nn.Linear(64, 256), nn.Tanh()]
    for _ in range(4):
        layers += [nn.Linear(256, 256), nn.Tanh()]
    return nn.Sequential(*layers, nn.Linear(256, 10))


@pytest.mark.parametrize("tol", [0.1, 0.01])
def test_lsuv_gives_every_layer_unit_output_variance(tol):
    model = tanh_mlp()
    x = 3.0 * torch.randn(512, 64) + 1.0
    before = output_variances(model, x)
    assert max(abs(v - 1) for v in before.values()) > 0.5  # default init is far from it
    rec = R.lsuv_init_(model, x, tol=tol)
    after = output_variances(model, x)
    assert len(after) == 6
    for name, var in after.items():
        assert abs(var - 1.0) < tol, name
        assert rec[name]["scheme"] == "lsuv" and rec[name]["converged"]
        assert rec[name]["variance"] == pytest.approx(var, rel=1e-4)


def test_lsuv_keeps_orthogonal_directions_and_zero_biases():
    model = tanh_mlp()
    R.init_(model, "lsuv", torch.randn(256, 64))
    w = model[2].weight.detach().double()
    g = w.T @ w
    scale = g.diagonal().mean()
    assert torch.allclose(g / scale, torch.eye(256, dtype=torch.float64), atol=1e-5)
    assert all(torch.count_nonzero(m.bias) == 0 for m in model if isinstance(m, nn.Linear))


def test_lsuv_on_a_conv_net_and_batchnorm_buffers_untouched():
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(16 * 8 * 8, 10),
    )
    x = torch.randn(64, 3, 8, 8)
    R.lsuv_init_(model, x)
    variances = output_variances(model, x, (nn.Conv2d, nn.Linear))
    assert len(variances) == 3
    for name, var in variances.items():
        assert abs(var - 1.0) < 0.1, name
    # LSUV's own forward passes (train mode) leave the running statistics as they were
    model2 = nn.Sequential(
        nn.Conv2d(3, 16, 3), nn.BatchNorm2d(16), nn.ReLU(), nn.Flatten(), nn.Linear(16 * 36, 10)
    )
    bn = model2[1]
    running = bn.running_mean.clone(), bn.running_var.clone(), bn.num_batches_tracked.clone()
    R.lsuv_init_(model2, x)
    assert torch.equal(bn.running_mean, running[0]) and torch.equal(bn.running_var, running[1])
    assert bn.num_batches_tracked.item() == running[2].item() == 0


def test_lsuv_reports_layers_that_do_not_converge():
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rec = R.lsuv_init_(model, torch.randn(32, 8), max_iter=1, tol=1e-9)
    assert any("did not reach" in str(w.message) for w in caught)
    assert rec["0"]["iterations"] == 1 and not rec["0"]["converged"]


def test_lsuv_needs_inputs_and_leaves_the_model_unchanged_on_error(snapshot):
    model = tanh_mlp()
    unchanged = snapshot(model)
    with pytest.raises(GradwatchValueError, match="inputs"):
        R.lsuv_init_(model)
    with pytest.raises(GradwatchValueError, match="inputs"):
        R.init_(model, "lsuv")
    # zero inputs: zero output variance at the first layer, after the orthogonal pass began
    with pytest.raises(GradwatchValueError, match="variance"):
        R.lsuv_init_(model, torch.zeros(16, 64))
    with pytest.raises(GradwatchValueError, match="forward pass"):
        R.lsuv_init_(model, torch.randn(16, 63))
    unchanged()
