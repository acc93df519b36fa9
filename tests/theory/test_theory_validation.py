"""Bad input raises a gradwatch error whose message names the argument and the fix."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import gradwatch.theory as T
from gradwatch.errors import GradwatchTypeError, GradwatchValueError

FUNCS = [T.q_star, T.chi1, T.c_star, T.depth_scales, T.phase, T.trainable_depth]


@pytest.mark.parametrize("func", FUNCS)
@pytest.mark.parametrize("name", ["tahn", "ReLu6", "", "tanh:2"])
def test_unknown_activation_names_list_the_known_ones(func, name):
    with pytest.raises(GradwatchValueError, match="activation") as info:
        func(name, 1.0, 0.0)
    for known in ("tanh", "relu", "gelu", "leaky_relu"):
        assert known in str(info.value)


def test_bad_leaky_slope_is_named():
    with pytest.raises(GradwatchValueError, match="slope"):
        T.chi1("leaky_relu:abc", 1.0, 0.0)
    with pytest.raises(GradwatchValueError, match="slope"):
        T.chi1("leaky_relu:nan", 1.0, 0.0)
    with pytest.raises(GradwatchValueError, match="slope"):
        T.chi1("leaky_relu:", 1.0, 0.0)


def test_names_are_case_and_space_insensitive():
    assert T.chi1(" Tanh ", 1.5, 0.05) == T.chi1("tanh", 1.5, 0.05)


@pytest.mark.parametrize("func", FUNCS)
@pytest.mark.parametrize("sw2", [0.0, -1.0, math.nan, math.inf, np.array([1.0, -2.0])])
def test_sigma_w2_must_be_positive_and_finite(func, sw2):
    with pytest.raises(GradwatchValueError, match="sigma_w2"):
        func("tanh", sw2, 0.05)


@pytest.mark.parametrize("func", FUNCS)
@pytest.mark.parametrize("sb2", [-0.1, math.nan, -math.inf, np.array([0.0, math.nan])])
def test_sigma_b2_must_be_non_negative_and_finite(func, sb2):
    with pytest.raises(GradwatchValueError, match="sigma_b2"):
        func("tanh", 1.0, sb2)


def test_critical_sigma_w2_checks_sigma_b2():
    with pytest.raises(GradwatchValueError, match="sigma_b2"):
        T.critical_sigma_w2("tanh", -1.0)


@pytest.mark.parametrize("bad", ["1.5", None, True, [1.0, "a"]])
def test_non_numbers_are_type_errors(bad):
    with pytest.raises(GradwatchTypeError, match="sigma_w2"):
        T.chi1("tanh", bad, 0.0)


def test_shapes_that_do_not_broadcast_name_both_arguments():
    with pytest.raises(GradwatchValueError, match="sigma_w2.*sigma_b2"):
        T.chi1("tanh", np.ones(3), np.ones(4))


@pytest.mark.parametrize("depth", [0, -3])
def test_depth_must_be_positive(depth):
    with pytest.raises(GradwatchValueError, match="depth"):
        T.gradient_ratio("tanh", 1.0, 0.0, depth)


@pytest.mark.parametrize("depth", [2.5, "10", True])
def test_depth_must_be_an_int(depth):
    with pytest.raises(GradwatchTypeError, match="depth"):
        T.predicted_mean_sq_singular_value("tanh", 1.0, 0.0, depth)


def test_phase_tol_must_be_non_negative():
    with pytest.raises(GradwatchValueError, match="tol"):
        T.phase("tanh", 1.0, 0.0, tol=-1)


def test_activation_of_wrong_type_is_a_type_error():
    with pytest.raises(GradwatchTypeError, match="activation"):
        T.chi1(3.0, 1.0, 0.0)


def test_non_elementwise_callable_is_rejected():
    with pytest.raises(GradwatchValueError, match="elementwise"):
        T.chi1(lambda x: torch.softmax(x, dim=-1), 1.0, 0.0)
    with pytest.raises(GradwatchValueError, match="elementwise"):
        T.chi1(lambda x: x.sum(), 1.0, 0.0)


def test_callable_that_fails_everywhere_is_rejected():
    def broken(x):
        raise RuntimeError("boom")

    with pytest.raises(GradwatchValueError, match="broken"):
        T.chi1(broken, 1.0, 0.0)
