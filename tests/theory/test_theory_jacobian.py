"""The input-output Jacobian spectrum: orthogonal linear nets, Gaussian nets, bookkeeping."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from theory_oracles import quad_q_star
from torch import nn

import gradwatch.theory as T
from gradwatch.errors import GradwatchTypeError, GradwatchValueError


def gaussian_net(width, depth, sw2, sb2, act, seed):
    torch.manual_seed(seed)
    layers = []
    for _ in range(depth):
        lin = nn.Linear(width, width)
        nn.init.normal_(lin.weight, std=math.sqrt(sw2 / width))
        nn.init.normal_(lin.bias, std=math.sqrt(sb2)) if sb2 > 0 else nn.init.zeros_(lin.bias)
        layers += [lin, act()]
    return nn.Sequential(*layers).double()


def test_deep_linear_orthogonal_network_is_an_isometry():
    torch.manual_seed(0)
    layers = [nn.Linear(64, 64, bias=False) for _ in range(12)]
    for lin in layers:
        nn.init.orthogonal_(lin.weight)
    spec = T.jacobian_spectrum(nn.Sequential(*layers), torch.randn(5, 64), n_examples=3)
    assert spec.singular_values.shape == (3, 64)
    np.testing.assert_allclose(spec.singular_values, 1.0, atol=1e-5)
    assert spec.mean_sq_singular_value == pytest.approx(1.0, abs=1e-5)
    assert spec.var_sq_singular_value < 1e-9
    assert spec.condition_number == pytest.approx(1.0, abs=1e-4)


def test_gaussian_tanh_net_mean_sq_singular_value_is_chi1_to_the_depth():
    width, depth, sw2, sb2 = 128, 8, 1.5, 0.05
    # Inputs whose first pre-activations already have variance q* (q* computed by scipy.quad).
    q = quad_q_star("tanh", sw2, sb2)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, width, generator=gen, dtype=torch.float64) * math.sqrt((q - sb2) / sw2)
    # Averaged over 8 networks: one network's value scatters by about 15% at this width,
    # the average by about 5% (measured over 12 repetitions).
    measured = np.mean(
        [
            T.jacobian_spectrum(gaussian_net(width, depth, sw2, sb2, nn.Tanh, seed), x)
            .mean_sq_singular_value
            for seed in range(8)
        ]
    )
    predicted = T.predicted_mean_sq_singular_value("tanh", sw2, sb2, depth)
    assert predicted == pytest.approx(T.chi1("tanh", sw2, sb2) ** depth)
    assert predicted < 0.7  # far enough from 1 for the check to mean something
    assert measured == pytest.approx(predicted, rel=0.2)


def test_gaussian_relu_net_at_he_init_keeps_mean_sq_singular_value_near_one():
    width, depth = 128, 10
    x = torch.randn(2, width, dtype=torch.float64)
    measured = np.mean(
        [
            T.jacobian_spectrum(gaussian_net(width, depth, 2.0, 0.0, nn.ReLU, seed), x)
            .mean_sq_singular_value
            for seed in range(8)
        ]
    )
    assert T.predicted_mean_sq_singular_value("relu", 2.0, 0.0, depth) == 1.0
    # The average over 8 networks scatters by about 9% (Hanin 2018: ~exp(5 L / N)).
    assert measured == pytest.approx(1.0, rel=0.3)
    # Xavier-like σw² = 1 under ReLU: (1/2)^10 predicted (He et al. 2015).
    half = np.mean(
        [
            T.jacobian_spectrum(gaussian_net(width, depth, 1.0, 0.0, nn.ReLU, seed), x)
            .mean_sq_singular_value
            for seed in range(8)
        ]
    )
    expected = T.predicted_mean_sq_singular_value("relu", 1.0, 0.0, depth)
    assert expected == 0.5**depth
    assert half == pytest.approx(expected, rel=0.3)


def test_spread_of_the_spectrum_grows_with_depth_for_gaussian_relu_nets():
    # Pennington et al. 2017: at criticality the mean stays 1 but the spread grows with L.
    x = torch.randn(2, 128, dtype=torch.float64)
    shallow = T.jacobian_spectrum(gaussian_net(128, 2, 2.0, 0.0, nn.ReLU, seed=4), x)
    deep = T.jacobian_spectrum(gaussian_net(128, 16, 2.0, 0.0, nn.ReLU, seed=4), x)
    assert deep.var_sq_singular_value > 3 * shallow.var_sq_singular_value


def test_modes_are_restored_and_batchnorm_runs_in_eval():
    model = nn.Sequential(nn.Linear(8, 8), nn.BatchNorm1d(8), nn.Dropout(0.5), nn.Linear(8, 3))
    model.train()
    model[2].eval()  # mixed modes must come back exactly
    before = [m.training for m in model.modules()]
    spec = T.jacobian_spectrum(model, torch.randn(6, 8), n_examples=10)
    assert [m.training for m in model.modules()] == before
    assert spec.n_examples == 6
    assert spec.singular_values.shape == (6, 3)
    assert set(spec.to_dict()) >= {"mean_sq_singular_value", "var_sq_singular_value"}


def test_matches_a_brute_force_jacobian_for_a_conv_net():
    torch.manual_seed(5)
    model = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.Tanh(), nn.Flatten(), nn.Linear(48, 5))
    x = torch.randn(2, 2, 4, 4)
    spec = T.jacobian_spectrum(model, x, n_examples=1)
    rows = []
    for k in range(5):  # one backward pass per output coordinate
        xi = x[:1].clone().requires_grad_(True)
        model(xi)[0, k].backward()
        rows.append(xi.grad.reshape(-1))
    s = torch.linalg.svdvals(torch.stack(rows).double()).numpy()
    np.testing.assert_allclose(spec.singular_values[0], s, rtol=1e-5)


def test_bad_inputs_name_the_argument():
    model = nn.Linear(3, 3)
    with pytest.raises(GradwatchTypeError, match="inputs"):
        T.jacobian_spectrum(model, np.zeros((2, 3)))
    with pytest.raises(GradwatchTypeError, match="inputs"):
        T.jacobian_spectrum(model, torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(GradwatchValueError, match="inputs"):
        T.jacobian_spectrum(model, torch.zeros(0, 3))
    with pytest.raises(GradwatchValueError, match="n_examples"):
        T.jacobian_spectrum(model, torch.zeros(2, 3), n_examples=0)
    with pytest.raises(GradwatchTypeError, match="model"):
        T.jacobian_spectrum("not a model", torch.zeros(2, 3))
