"""Activation resolution, and closed-form derivatives against torch autograd."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import special
from torch import nn

import gradwatch.theory as T
from gradwatch.theory import resolve_activation

X = np.concatenate([np.linspace(-4.1, 3.9, 41), [-1.0, 0.0, 1.0]])  # the kinks too
LAMBDA, ALPHA = 1.0507009873554805, 1.6732632423543772

#: The same activations as torch functions: their derivatives come from autograd, an
#: implementation independent of the library's closed forms.
TORCH = {
    "tanh": torch.tanh,
    "relu": torch.relu,
    "leaky_relu": F.leaky_relu,
    "leaky_relu:0.2": lambda x: F.leaky_relu(x, 0.2),
    "sigmoid": torch.sigmoid,
    "gelu": F.gelu,
    "elu": F.elu,
    "selu": F.selu,
    # x / (1 + |x|) by branches: abs's double backward imports torch._dynamo (seconds).
    "softsign": lambda x: x / (1 + x.clamp(min=0) - x.clamp(max=0)),
    "linear": lambda x: 1.0 * x,
    "hard_tanh": F.hardtanh,
    "swish": F.silu,
    "silu": F.silu,
    "erf": torch.erf,
}


@pytest.mark.parametrize("name", sorted(TORCH))
def test_named_closed_forms_match_torch_autograd(name):
    exact = resolve_activation(name)
    auto = resolve_activation(TORCH[name])
    assert exact.backend == "exact" and auto.backend == "torch"
    pairs = zip(exact.derivatives(X, 2), auto.derivatives(X, 2), strict=True)
    for k, (got, want) in enumerate(pairs):
        keep = X != 0 if (name, k) == ("softsign", 2) else slice(None)  # a choice at 0
        np.testing.assert_allclose(got[keep], want[keep], rtol=1e-12, atol=1e-14)


def test_a_few_values_by_hand():
    x = np.array([-1.5, 0.5, 2.0])
    np.testing.assert_allclose(resolve_activation("gelu")(x), x * special.ndtr(x), rtol=1e-14)
    np.testing.assert_allclose(
        resolve_activation("selu")(x), LAMBDA * np.where(x > 0, x, ALPHA * np.expm1(x))
    )
    d2 = resolve_activation("erf").derivatives(x, 2)[2]
    np.testing.assert_allclose(d2, -4 * x / math.sqrt(math.pi) * np.exp(-x * x), rtol=1e-14)


def test_every_known_name_resolves():
    assert set(T.KNOWN_ACTIVATIONS) == set(TORCH) - {"leaky_relu:0.2"}
    for name in T.KNOWN_ACTIVATIONS:
        act = resolve_activation(name)
        assert act(np.array([0.5])).shape == (1,)
    assert resolve_activation("silu")(X) == pytest.approx(resolve_activation("swish")(X))
    assert resolve_activation("leaky_relu").slopes == (1.0, 0.01)


def test_numpy_callable_uses_finite_differences():
    act = resolve_activation(np.tanh)
    assert act.backend == "numpy"
    _, d1, d2 = act.derivatives(X, order=2)
    np.testing.assert_allclose(d1, 1 - np.tanh(X) ** 2, atol=1e-8)
    np.testing.assert_allclose(d2, -2 * np.tanh(X) * (1 - np.tanh(X) ** 2), atol=1e-5)
    assert T.chi1(np.tanh, 1.5, 0.05) == pytest.approx(T.chi1("tanh", 1.5, 0.05), rel=1e-7)


def test_torch_callables_and_modules_use_autograd():
    act = resolve_activation(torch.tanh)
    assert act.backend == "torch"
    assert T.chi1(torch.tanh, 1.5, 0.05) == pytest.approx(T.chi1("tanh", 1.5, 0.05), rel=1e-13)
    assert T.chi1(nn.Tanh(), 1.5, 0.05) == pytest.approx(T.chi1("tanh", 1.5, 0.05), rel=1e-13)
    # A module with a float32 parameter is copied to float64.
    prelu = nn.PReLU(init=0.2)
    assert T.chi1(prelu, 1.0, 0.0) == pytest.approx(0.52, rel=1e-6)


def test_kinks_given_to_a_callable_make_its_integrals_exact():
    plain = resolve_activation(lambda x: torch.clamp(x, -1.0, 1.0))
    kinked = dataclasses.replace(plain, kinks=(-1.0, 1.0))
    exact = T.chi1("hard_tanh", 2.0, 0.1)
    assert T.chi1(kinked, 2.0, 0.1) == pytest.approx(exact, rel=1e-12)
    # Without them the jump of φ'² at ±1 costs about 1e-3 (relative).
    assert abs(T.chi1(plain, 2.0, 0.1) - exact) > 1e-4 * exact


@pytest.mark.parametrize(
    ("module", "name"),
    [
        (nn.Tanh(), "tanh"),
        (nn.ReLU(), "relu"),
        (nn.Sigmoid(), "sigmoid"),
        (nn.GELU(), "gelu"),
        (nn.ELU(), "elu"),
        (nn.SELU(), "selu"),
        (nn.LeakyReLU(0.2), "leaky_relu:0.2"),
        (nn.LeakyReLU(), "leaky_relu:0.01"),
        (nn.Softsign(), "softsign"),
        (nn.Hardtanh(), "hard_tanh"),
        (nn.SiLU(), "silu"),
        (nn.Identity(), "linear"),
    ],
)
def test_activation_modules_map_to_names(module, name):
    assert T.activation_from_module(module).name == name


def test_other_modules():
    assert T.activation_from_module(nn.Linear(2, 2)) is None
    assert T.activation_from_module(nn.Dropout()) is None
    relu6 = T.activation_from_module(nn.ReLU6())
    assert relu6.kinks == (0.0, 6.0)
    np.testing.assert_allclose(relu6(np.array([-1.0, 3.0, 7.0])), [0.0, 3.0, 6.0])
    softplus = T.activation_from_module(nn.Softplus())
    np.testing.assert_allclose(softplus.derivatives(X, 1)[1], special.expit(X), rtol=1e-12)
    gelu_tanh = T.activation_from_module(nn.GELU(approximate="tanh"))
    assert gelu_tanh.backend == "torch" and gelu_tanh.name != "gelu"
