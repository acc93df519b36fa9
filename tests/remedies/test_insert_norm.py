import pytest
import torch
from torch import nn

import gradwatch.remedies as R
from gradwatch.errors import GradwatchValueError


def types(model):
    return [type(m) for m in model.modules() if not isinstance(m, nn.Sequential)]


def mlp():
    return nn.Sequential(
        nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 5)
    )


def test_batch_norm_goes_after_each_hidden_linear_before_its_activation(snapshot):
    model = mlp()
    unchanged = snapshot(model)
    new = R.insert_norm(model)
    L, B, A = nn.Linear, nn.BatchNorm1d, nn.ReLU
    assert types(new) == [L, B, A, L, B, A, L]
    assert [new[i].num_features for i in (1, 4)] == [64, 64]
    assert list(new._modules) == ["0", "0_norm", "1", "2", "2_norm", "3", "4"]
    assert types(model) == [L, A, L, A, L]  # the input model is untouched
    unchanged()
    assert new[0] is not model[0] and torch.equal(new[0].weight, model[0].weight)
    x = torch.randn(32, 20)
    assert new(x).shape == model(x).shape == (32, 5)
    # in train mode each inserted layer standardises its features over the batch
    h = new[1](new[0](x))
    assert torch.allclose(h.mean(0), torch.zeros(64), atol=1e-5)
    assert torch.allclose(h.var(0, unbiased=False), torch.ones(64), atol=1e-3)


def test_after_activation_and_layer_norm():
    new = R.insert_norm(mlp(), kind="layer", after="activation")
    L, N, A = nn.Linear, nn.LayerNorm, nn.ReLU
    assert types(new) == [L, A, N, L, A, N, L]
    assert new[2].normalized_shape == (64,)
    assert new(torch.randn(3, 20)).shape == (3, 5)


def conv_net():
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.Sequential(nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)),
        nn.Flatten(),
        nn.Linear(16 * 4 * 4, 10),
    )


@pytest.mark.parametrize(("kind", "norm"), [("batch", nn.BatchNorm2d), ("layer", nn.GroupNorm)])
def test_conv_layers_in_nested_sequentials(kind, norm):
    model = conv_net()
    new = R.insert_norm(model, kind=kind)
    C, A, P, F, L = nn.Conv2d, nn.ReLU, nn.MaxPool2d, nn.Flatten, nn.Linear
    assert types(new) == [C, norm, A, C, norm, A, P, F, L]
    sizes = [
        m.num_features if kind == "batch" else m.num_channels
        for m in new.modules()
        if isinstance(m, norm)
    ]
    assert sizes == [8, 16]
    x = torch.randn(4, 3, 8, 8)
    assert new(x).shape == model(x).shape == (4, 10)


def test_named_entries_and_eval_mode_are_respected():
    model = conv_net().eval()
    new = R.insert_norm(model, after=["2.1", "2.2"])
    assert [type(m) for m in new[2]] == [
        nn.Conv2d,
        nn.ReLU,
        nn.BatchNorm2d,
        nn.MaxPool2d,
        nn.BatchNorm2d,
    ]
    assert not new[2][2].training


class Custom(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.b = nn.Linear(4, 4)

    def forward(self, x):
        return self.b(torch.relu(self.a(x))) + x


def test_structures_it_cannot_follow_are_clear_errors(snapshot):
    custom = Custom()
    unchanged = snapshot(custom)
    with pytest.raises(GradwatchValueError, match="nn.Sequential.*own forward"):
        R.insert_norm(custom)
    unchanged()
    model = conv_net()
    unchanged = snapshot(model)
    with pytest.raises(GradwatchValueError, match="feature count"):
        R.insert_norm(model, after=["3"])  # after the Flatten
    with pytest.raises(GradwatchValueError, match="not entries"):
        R.insert_norm(model, after=["9"])
    with pytest.raises(GradwatchValueError, match="kind"):
        R.insert_norm(model, kind="group")
    with pytest.raises(GradwatchValueError, match="no hidden"):
        R.insert_norm(nn.Sequential(nn.Linear(3, 2)))
    assert len(model) == 5
    unchanged()
