import math

import pytest
import torch
from torch import nn

import gradwatch.remedies as R
from gradwatch.errors import GradwatchValueError

W = 256


def resnet(n_blocks, layers_per_branch):
    blocks = []
    for _ in range(n_blocks):
        branch = []
        for i in range(layers_per_branch):
            branch += [nn.Linear(W, W)] + ([nn.ReLU()] if i < layers_per_branch - 1 else [])
        blocks.append(R.Residual(nn.Sequential(*branch)))
    return nn.Sequential(nn.Linear(32, W), nn.ReLU(), *blocks, nn.Linear(W, 10))


@pytest.mark.parametrize(("n_blocks", "m"), [(4, 2), (2, 3)])
def test_fixup_scales_branches_by_l_to_the_minus_1_over_2m_minus_2(n_blocks, m):
    model = resnet(n_blocks, m)
    rec = R.init_(model, "fixup")
    scale = n_blocks ** (-1.0 / (2 * m - 2))
    he_relu = math.sqrt(2.0) / math.sqrt(W)
    assert abs(model[0].weight.std().item() / (math.sqrt(2.0) / math.sqrt(32)) - 1) < 0.02
    for b in range(n_blocks):
        branch = model[2 + b].branch
        linears = [layer for layer in branch if isinstance(layer, nn.Linear)]
        for layer in linears[:-1]:
            assert abs(layer.weight.std().item() / (he_relu * scale) - 1) < 0.02
        assert torch.count_nonzero(linears[-1].weight) == 0
        assert torch.count_nonzero(linears[-1].bias) == 0
        assert rec[f"{2 + b}.branch.0"]["scale"] == pytest.approx(scale)
    assert torch.count_nonzero(model[-1].weight) == 0  # the classifier
    x = torch.randn(8, 32)
    out = model(x)
    assert torch.equal(out, torch.zeros(8, 10))
    (out - 1).square().sum().backward()
    assert model[-1].weight.grad.abs().sum() > 0  # training can start from here


def test_zero_init_residual_branches_touches_only_the_last_layer(snapshot):
    model = nn.Sequential(
        nn.Linear(16, 32),
        R.Residual(
            nn.Sequential(nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 32), nn.BatchNorm1d(32))
        ),
        R.Residual(nn.Sequential(nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 32))),
        nn.Linear(32, 2),
    )
    kept = {k: v.clone() for k, v in model.state_dict().items()}
    rec = R.zero_init_residual_branches_(model)
    assert set(rec) == {"1.branch.3", "2.branch.2"}
    assert torch.count_nonzero(model[1].branch[3].weight) == 0  # BN gamma, as torchvision does
    assert torch.count_nonzero(model[2].branch[2].weight) == 0
    for key, value in model.state_dict().items():
        if not key.startswith(("1.branch.3.weight", "1.branch.3.bias", "2.branch.2.")):
            assert torch.equal(value, kept[key]), key
    x = torch.randn(4, 32)
    model.eval()
    assert torch.allclose(model[1](x), x) and torch.allclose(model[2](x), x)


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(W, W), nn.ReLU(), nn.Linear(W, W))

    def forward(self, x):
        return x + self.body(x)


def test_fixup_with_named_branches_of_a_custom_model():
    model = nn.Sequential(Block(), Block(), Block(), Block())
    R.fixup_init_(model, branches=[f"{i}.body" for i in range(4)])
    for i in range(4):
        assert abs(model[i].body[0].weight.std().item() / (math.sqrt(2.0 / W) * 0.5) - 1) < 0.02
        assert torch.count_nonzero(model[i].body[2].weight) == 0


def test_fixup_without_residual_blocks_is_an_error(snapshot):
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    unchanged = snapshot(model)
    with pytest.raises(GradwatchValueError, match="add_residual"):
        R.fixup_init_(model)
    with pytest.raises(GradwatchValueError, match="branches"):
        R.fixup_init_(model, branches=["nope"])
    unchanged()
