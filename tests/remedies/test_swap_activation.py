import math

import pytest
import torch
from torch import nn

import gradwatch.remedies as R
from gradwatch.errors import GradwatchTypeError, GradwatchValueError


class Block(nn.Module):
    def __init__(self, width):
        super().__init__()
        self.fc = nn.Linear(width, width)
        self.act = nn.Sigmoid()

    def forward(self, x):
        return self.act(self.fc(x))


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Linear(16, 64), nn.Sigmoid())
        self.blocks = nn.ModuleList([Block(64), Block(64)])
        self.acts = nn.ModuleDict({"out": nn.Tanh()})
        self.head = nn.Linear(64, 4)

    def forward(self, x):
        x = self.stem(x)
        for block in self.blocks:
            x = block(x)
        return self.head(self.acts["out"](x))


def test_swap_replaces_nested_entries_attributes_and_containers():
    model = Net()
    x = torch.randn(8, 16)
    before = model(x)
    changed = R.swap_activation(model, nn.Sigmoid, "relu", reinit=False)
    assert changed == ["stem.1", "blocks.0.act", "blocks.1.act"]
    acts = [type(m) for m in model.modules() if isinstance(m, (nn.Sigmoid, nn.ReLU, nn.Tanh))]
    assert acts == [nn.ReLU, nn.ReLU, nn.ReLU, nn.Tanh]
    assert not torch.allclose(model(x), before)
    assert R.swap_activation(model, "tanh", nn.GELU) == ["acts.out"]
    assert isinstance(model.acts["out"], nn.GELU)


def test_nothing_to_swap_returns_an_empty_list_and_changes_nothing(snapshot):
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    unchanged = snapshot(model)
    assert R.swap_activation(model, "sigmoid", "relu") == []
    assert isinstance(model[1], nn.ReLU)
    unchanged()


def sigmoid_mlp(out=256):
    return nn.Sequential(
        nn.Linear(512, 512), nn.Sigmoid(), nn.Linear(512, out), nn.Sigmoid(), nn.Linear(out, 10)
    )


@pytest.mark.parametrize(
    ("new", "std_of"),
    [
        ("relu", lambda n_in, n_out: math.sqrt(2.0 / n_in)),  # He
        (lambda: nn.LeakyReLU(0.1), lambda n_in, n_out: math.sqrt(2.0 / (1.01 * n_in))),
        (nn.SELU, lambda n_in, n_out: math.sqrt(1.0 / n_in)),  # LeCun
        ("tanh", lambda n_in, n_out: math.sqrt(2.0 / (n_in + n_out))),  # Xavier
    ],
)
def test_reinit_matches_the_new_activation(new, std_of):
    model = sigmoid_mlp()
    head = model[4].weight.detach().clone()
    changed = R.swap_activation(model, "sigmoid", new)
    assert changed == ["1", "3"]
    for layer in (model[0], model[2]):
        n_out, n_in = layer.weight.shape
        assert abs(layer.weight.std().item() / std_of(n_in, n_out) - 1) < 0.02
        assert torch.count_nonzero(layer.bias) == 0
    assert torch.equal(model[4].weight, head)  # feeds no new activation


def test_factory_and_module_give_fresh_instances_but_shared_stays_shared():
    model = sigmoid_mlp()
    R.swap_activation(model, nn.Sigmoid, lambda: nn.LeakyReLU(0.3), reinit=False)
    assert model[1] is not model[3] and model[1].negative_slope == 0.3
    R.swap_activation(model, nn.LeakyReLU, nn.ELU(alpha=0.5), reinit=False)
    assert model[1] is not model[3] and model[3].alpha == 0.5
    shared = nn.Tanh()
    model = nn.Sequential(nn.Linear(4, 4), shared, nn.Linear(4, 4), shared)
    assert R.swap_activation(model, "tanh", "relu") == ["1", "3"]
    assert model[1] is model[3] and isinstance(model[1], nn.ReLU)


def test_bad_activation_arguments_are_clear_errors(snapshot):
    model = sigmoid_mlp(out=8)
    unchanged = snapshot(model)
    with pytest.raises(GradwatchValueError, match="old='sigmod'.*sigmoid"):
        R.swap_activation(model, "sigmod", "relu")
    with pytest.raises(GradwatchValueError, match="new='rleu'"):
        R.swap_activation(model, "sigmoid", "rleu")
    with pytest.raises(GradwatchTypeError, match="new must make an nn.Module"):
        R.swap_activation(model, "sigmoid", lambda: torch.relu)
    with pytest.raises(GradwatchTypeError, match="old must be"):
        R.swap_activation(model, 3, "relu")
    with pytest.raises(GradwatchValueError, match="forward pass"):
        R.swap_activation(model, "sigmoid", "relu", inputs=torch.randn(2, 3))
    assert isinstance(model[1], nn.Sigmoid) and isinstance(model[3], nn.Sigmoid)
    unchanged()
