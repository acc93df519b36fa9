"""Bad input: a gradwatch error that names the argument, and the model left as it was."""

import pytest
import torch
from torch import nn

import gradwatch.remedies as R
from gradwatch.errors import GradwatchError, GradwatchTypeError, GradwatchValueError


def mlp():
    return nn.Sequential(
        nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 2)
    )


class Custom(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 8)

    def forward(self, x):
        return torch.relu(self.fc(x)) + x


@pytest.mark.parametrize(
    ("call", "error", "pattern"),
    [
        (lambda m: R.init_(m, "kaimin"), GradwatchValueError, "scheme 'kaimin'.*orthogonal"),
        (lambda m: R.init_(m, 3), GradwatchValueError, "scheme"),
        (lambda m: R.init_(m, "lsuv"), GradwatchValueError, "inputs is required"),
        (lambda m: R.init_(m, "he", mode="fan_avg"), GradwatchValueError, "mode must be"),
        (lambda m: R.init_(m, "he", distribution="cauchy"), GradwatchValueError, "distribution"),
        (lambda m: R.init_(m, "he", nonlinearity="relu"), GradwatchTypeError, "options"),
        (lambda m: R.init_(m, "xavier", gain=-1.0), GradwatchValueError, "gain"),
        (lambda m: R.init_(m, "he", torch.randn(4, 7)), GradwatchValueError, "inputs: the forward"),
        (lambda m: R.init_(m, "orthogonal", "not a batch"), GradwatchTypeError, "inputs must be"),
        (lambda m: R.init_(m, "lsuv", torch.randn(4, 8), tol=-0.1), GradwatchValueError, "tol"),
        (
            lambda m: R.init_(m, "lsuv", torch.randn(4, 8), max_iter=2.5),
            GradwatchTypeError,
            "max_iter",
        ),
        (lambda m: R.init_(m, "fixup"), GradwatchValueError, "Residual"),
        (lambda m: R.he_init_(m, layers=["7"]), GradwatchValueError, "layers names"),
        (lambda m: R.insert_norm(m, after="input"), GradwatchValueError, "after must be"),
        (lambda m: R.add_residual(m, block_size=-1), GradwatchValueError, "block_size"),
        (lambda m: R.swap_activation(m, "relu", "tanhh"), GradwatchValueError, "new='tanhh'"),
        (lambda m: R.clip_grad_norm_(m, max_norm=-1.0), GradwatchValueError, "max_norm"),
        (lambda m: R.clip_grad_norm_(m, max_norm="1"), GradwatchTypeError, "max_norm"),
    ],
)
def test_bad_arguments_raise_named_errors_and_change_nothing(call, error, pattern, snapshot):
    model = mlp()
    structure = repr(model)
    unchanged = snapshot(model)
    with pytest.raises(error, match=pattern) as info:
        call(model)
    assert isinstance(info.value, GradwatchError)
    assert repr(model) == structure
    unchanged()


def test_unfollowable_structure_is_explained_and_left_alone(snapshot):
    model = Custom()
    unchanged = snapshot(model)
    for remedy in (R.insert_norm, R.add_residual):
        with pytest.raises(GradwatchValueError, match="Custom has its own forward") as info:
            remedy(model)
        assert "model" in str(info.value)
    unchanged()


@pytest.mark.parametrize(
    "call",
    [
        lambda m: R.init_(m, "he"),
        lambda m: R.lsuv_init_(m, torch.randn(2, 8)),
        lambda m: R.swap_activation(m, "relu", "tanh"),
        lambda m: R.insert_norm(m),
        lambda m: R.add_residual(m),
        lambda m: R.fixup_init_(m),
    ],
)
def test_non_module_model_is_a_type_error_naming_model(call):
    with pytest.raises(GradwatchTypeError, match="model must be a torch.nn.Module"):
        call(mlp().state_dict())


def test_errors_are_also_builtin_errors():
    with pytest.raises(ValueError):
        R.init_(mlp(), "unknown")
    with pytest.raises(TypeError):
        R.init_([1, 2], "he")


def test_a_model_without_initialisable_layers_is_explained():
    with pytest.raises(GradwatchValueError, match="no nn.Linear"):
        R.init_(nn.Sequential(nn.Embedding(10, 4)), "he")
