"""Closed forms from the papers, including through the generic (callable) code path."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from theory_oracles import quad_chi1, quad_q_star

import gradwatch.theory as T


def relu_callable(x):
    # Not recognised as ReLU: goes through fixed-point iteration and quadrature.
    return torch.clamp(x, min=0.0)


def linear_callable(x):
    return 1.0 * x


@pytest.mark.parametrize("sw2", [0.3, 1.0, 1.7, 1.99, 2.5, 4.0])
@pytest.mark.parametrize("sb2", [0.0, 0.05, 1.0])
def test_relu_chi1_is_half_sigma_w2_for_every_q(sw2, sb2):
    assert T.chi1("relu", sw2, sb2) == sw2 / 2
    if sw2 < 2:  # finite q*, which changes with σb²: χ1 does not
        assert T.chi1(relu_callable, sw2, sb2) == pytest.approx(sw2 / 2, rel=1e-12)


@pytest.mark.parametrize("sw2", [0.5, 1.0, 1.5, 1.9])
@pytest.mark.parametrize("sb2", [0.0, 0.1, 2.0])
def test_relu_q_star_closed_form(sw2, sb2):
    expected = sb2 / (1 - sw2 / 2)
    assert T.q_star("relu", sw2, sb2) == pytest.approx(expected, rel=1e-14, abs=1e-300)
    assert T.q_star(relu_callable, sw2, sb2) == pytest.approx(expected, rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("sw2", [2.0, 2.5, 8.0])
def test_relu_q_star_is_infinite_from_sigma_w2_two(sw2):
    assert T.q_star("relu", sw2, 0.1) == math.inf
    assert T.q_star(relu_callable, sw2, 0.1) == math.inf


def test_relu_is_critical_only_at_he_init():
    assert T.critical_sigma_w2("relu", 0.0) == 2.0
    assert T.phase("relu", 2.0, 0.0) == "critical"
    assert T.phase("relu", 1.9, 0.0) == "ordered"
    assert T.phase("relu", 2.1, 0.0) == "chaotic"
    assert T.critical_sigma_w2(relu_callable, 0.05) == pytest.approx(2.0, rel=1e-9)


def test_leaky_relu_critical_point_is_two_over_one_plus_slope_squared():
    assert T.critical_sigma_w2("leaky_relu:0.2", 0.0) == pytest.approx(2 / 1.04, rel=1e-14)
    assert T.critical_sigma_w2("leaky_relu", 0.0) == pytest.approx(2 / 1.0001, rel=1e-14)
    assert T.chi1("leaky_relu:0.2", 1.0, 0.3) == pytest.approx(0.52, rel=1e-14)


@pytest.mark.parametrize("sw2", [0.25, 0.9, 1.5, 3.0])
def test_linear_chi1_is_sigma_w2(sw2):
    assert T.chi1("linear", sw2, 0.1) == sw2
    assert T.chi1(linear_callable, sw2, 0.1) == pytest.approx(sw2, rel=1e-12)
    if sw2 < 1:
        assert T.q_star("linear", sw2, 0.1) == pytest.approx(0.1 / (1 - sw2), rel=1e-14)
        assert T.q_star(linear_callable, sw2, 0.1) == pytest.approx(0.1 / (1 - sw2), rel=1e-9)


def test_tanh_is_critical_at_one_zero():
    assert T.critical_sigma_w2("tanh", 0.0) == 1.0
    assert T.q_star("tanh", 1.0, 0.0) == 0.0
    assert T.chi1("tanh", 1.0, 0.0) == pytest.approx(1.0, abs=1e-12)
    assert T.phase("tanh", 1.0, 0.0) == "critical"
    assert T.depth_scales("tanh", 1.0, 0.0)[2] == math.inf


@pytest.mark.parametrize("sw2", [0.3, 0.8, 1.0])
def test_tanh_without_bias_below_one_has_q_star_zero_and_chi1_sigma_w2(sw2):
    assert T.q_star("tanh", sw2, 0.0) == 0.0
    assert T.chi1("tanh", sw2, 0.0) == pytest.approx(sw2, rel=1e-12)
    # Also through the generic path (a tanh the library does not recognise).
    assert T.q_star(lambda x: torch.tanh(x), sw2, 0.0) == pytest.approx(0.0, abs=1e-12)


def test_tanh_above_one_without_bias_leaves_zero_and_is_chaotic():
    q = T.q_star("tanh", 1.5, 0.0)
    # q = 0 is a root too (unstable here): bracket the other one.
    assert q == pytest.approx(quad_q_star("tanh", 1.5, 0.0, lo=1e-3), rel=1e-9)
    assert q > 0.1
    assert T.c_star("tanh", 1.5, 0.0) == pytest.approx(0.0, abs=1e-9)  # odd φ, no bias


@pytest.mark.parametrize(("name", "sb2"), [("tanh", 0.05), ("tanh", 0.3), ("erf", 0.1)])
def test_critical_sigma_w2_is_where_independent_chi1_is_one(name, sb2):
    sw2 = T.critical_sigma_w2(name, sb2)
    q = quad_q_star(name, sw2, sb2)
    assert quad_chi1(name, sw2, q) == pytest.approx(1.0, abs=1e-8)
    assert T.phase(name, sw2 * 0.9, sb2) == "ordered"
    assert T.phase(name, sw2 * 1.1, sb2) == "chaotic"


def test_critical_line_rises_with_bias_variance_for_tanh():
    # Schoenholz et al. 2017, Fig. 1: the critical σw² grows with σb².
    sb2 = np.array([0.0, 0.01, 0.05, 0.1, 0.3])
    crit = T.critical_sigma_w2("tanh", sb2)
    assert crit.shape == sb2.shape
    assert np.all(np.diff(crit) > 0)


def test_gradient_ratio_and_predicted_singular_value_are_chi1_to_the_depth():
    chi = T.chi1("tanh", 1.5, 0.05)
    assert T.gradient_ratio("tanh", 1.5, 0.05, 20) == pytest.approx(chi**20, rel=1e-12)
    assert T.predicted_mean_sq_singular_value("relu", 2.0, 0.0, 50) == 1.0


def test_trainable_depth_is_six_xi_c_and_infinite_at_criticality():
    xi_c = T.depth_scales("tanh", 3.0, 0.05)[1]
    assert T.trainable_depth("tanh", 3.0, 0.05) == pytest.approx(6 * xi_c, rel=1e-12)
    assert T.trainable_depth("relu", 2.0, 0.0) == math.inf
    # Trainable depth peaks at the critical line (Schoenholz et al. 2017, Fig. 6).
    crit = T.critical_sigma_w2("tanh", 0.05)
    depths = T.trainable_depth("tanh", np.array([1.2, crit * 0.97, crit * 1.03, 3.0]), 0.05)
    assert depths[1] > depths[0] and depths[2] > depths[3]
    assert min(depths[1], depths[2]) > 100


def test_xi_grad_is_negative_when_exploding():
    assert T.depth_scales("tanh", 4.0, 0.05)[2] < 0
    assert T.depth_scales("tanh", 1.2, 0.05)[2] > 0
